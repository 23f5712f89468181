"""A short fingerprint of a model's architecture and weights, stored in every artifact.

Loading an artifact onto a different model must fail loudly. The fingerprint hashes the architecture
fields of the config and a few slices of the weights rounded to bfloat16, so the same checkpoint gives
the same fingerprint in float32 on a CPU and in bfloat16 on a GPU.
"""

from __future__ import annotations

import hashlib
import json

import torch
from torch import nn

ARCH_KEYS = (
    "model_type",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "vocab_size",
    "n_embd",
    "n_layer",
    "n_head",
)


def model_fingerprint(model: nn.Module, n_tensors: int = 8, n_values: int = 256) -> str:
    config = getattr(model.config, "text_config", None) or model.config
    arch = {key: getattr(config, key, None) for key in ARCH_KEYS}
    digest = hashlib.sha256(json.dumps(arch, sort_keys=True).encode())
    params = [p for _, p in model.named_parameters() if p.device.type != "meta"]
    for p in params[:n_tensors] + params[-1:]:
        values = p.detach().reshape(-1)[:n_values].to("cpu", torch.bfloat16)
        digest.update(values.view(torch.int16).numpy().tobytes())
    return digest.hexdigest()[:16]
