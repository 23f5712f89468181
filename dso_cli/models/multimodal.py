"""Batch image inputs of vision-language models: per-item processor outputs -> one forward's kwargs.

Items are processed one at a time (each has its own images and prompt), so a batch keeps every
item's images aligned with its own tokens. The scorer pads token ids itself; what depends on token
positions (Qwen's ``mm_token_type_ids``, Gemma-3's ``token_type_ids``, Mllama's
``cross_attention_mask``) is rebuilt here for the padded batch, and everything else is concatenated
in row order, the order in which the models scatter image features into their placeholders.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from dso_cli.models.layouts import model_family

Payload = Mapping[str, Tensor]
"""One item's processor output without its token ids (``pixel_values``, ``image_grid_thw``, ...)."""

_TOKEN_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids")


def payload_of(processed: Mapping[str, Any]) -> dict[str, Tensor]:
    """The image part of a processor's output for one item (token-aligned tensors are rebuilt later)."""
    return {k: v for k, v in processed.items() if k not in _TOKEN_KEYS and isinstance(v, Tensor)}


def image_token_id(model: nn.Module) -> int | None:
    config = model.config
    for name in ("image_token_id", "image_token_index"):
        value = getattr(config, name, None)
        if value is not None:
            return int(value)
    return None


def collate(
    model: nn.Module, input_ids: Tensor, lengths: Tensor, payloads: Sequence[Payload | None], dtype: torch.dtype
) -> dict[str, Tensor]:
    """Extra forward kwargs for a right-padded batch whose row ``r`` carries ``payloads[r]`` (or none)."""
    if not any(payloads):
        return {}
    device = input_ids.device
    if model_family(model) == "mllama":
        return _collate_cross_attention(input_ids, lengths, payloads, dtype)
    present = [p for p in payloads if p]
    out = {key: torch.cat([p[key] for p in present]).to(device) for key in present[0]}
    if "pixel_values" in out and out["pixel_values"].is_floating_point():
        out["pixel_values"] = out["pixel_values"].to(dtype)
    placeholder = image_token_id(model)
    family = model_family(model)
    if family in ("qwen2_5_vl", "qwen2_vl"):
        out["mm_token_type_ids"] = (input_ids == placeholder).long()
    elif family == "gemma3":
        out["token_type_ids"] = (input_ids == placeholder).long()
    return out


def needs_own_positions(model: nn.Module) -> bool:
    """Qwen-VL computes its 3-D (M-RoPE) positions from the image grid; 2-D positions would override them."""
    return model_family(model) in ("qwen2_5_vl", "qwen2_vl")


def _collate_cross_attention(
    input_ids: Tensor, lengths: Tensor, payloads: Sequence[Payload | None], dtype: torch.dtype
) -> dict[str, Tensor]:
    """Mllama: images padded to the batch's largest image count; each row's cross-attention mask
    extended over the tokens appended after its prompt (the images stay visible to the end)."""
    present = [p for p in payloads if p]
    batch, width = input_ids.shape
    n_images = max(int(p["pixel_values"].shape[1]) for p in present)
    pixel_shape = present[0]["pixel_values"].shape[2:]
    tiles = int(present[0]["aspect_ratio_mask"].shape[-1])
    device = input_ids.device
    pixels = torch.zeros(batch, n_images, *pixel_shape, dtype=dtype, device=device)
    ratio_ids = torch.zeros(batch, n_images, dtype=torch.long, device=device)
    ratio_mask = torch.zeros(batch, n_images, tiles, dtype=torch.long, device=device)
    cross = torch.zeros(batch, width, n_images, tiles, dtype=torch.long, device=device)
    for row, p in enumerate(payloads):
        if not p:
            continue
        n = int(p["pixel_values"].shape[1])
        pixels[row, :n] = p["pixel_values"][0].to(device, dtype)
        ratio_ids[row, :n] = p["aspect_ratio_ids"][0].to(device)
        ratio_mask[row, :n] = p["aspect_ratio_mask"][0].to(device)
        mask = p["cross_attention_mask"][0].to(device)  # [prompt tokens, images, tiles]
        length = int(lengths[row])
        if length > mask.shape[0]:
            mask = torch.cat([mask, mask[-1:].expand(length - mask.shape[0], -1, -1)])
        cross[row, :length, :n] = mask[:length]
    return {"pixel_values": pixels, "aspect_ratio_ids": ratio_ids, "aspect_ratio_mask": ratio_mask,
            "cross_attention_mask": cross}  # fmt: skip
