"""Where the normalisation modules of each model family's language backbone are.

DSO steers the output of every normalisation module of the *language* backbone (each decoder layer's
norms and the final norm), never a vision tower's. The registry maps a ``config.model_type`` to regular
expressions over ``named_modules()``; a user can override it with a list of names or one regex.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from torch import nn

from dso_cli.errors import DsoError

_DECODER = (r"^model\.layers\.\d+\.(input_layernorm|post_attention_layernorm)$", r"^model\.norm$")
_GEMMA = (
    r"^model\.layers\.\d+\.(input_layernorm|post_attention_layernorm|pre_feedforward_layernorm|post_feedforward_layernorm)$",
    r"^model\.norm$",
)
_GPT2 = (r"^transformer\.h\.\d+\.(ln_1|ln_2)$", r"^transformer\.ln_f$")
_TEXT_TOWER = r"^model\.language_model\."
"""Vision-language models keep their language backbone here; anchoring every pattern at it keeps the
vision tower and the projector out, even where they use the same norm class or leaf names (Qwen's
``visual.blocks.*.norm1``, Mllama's ``vision_model.transformer.layers.*.input_layernorm``)."""
VLM_FAMILIES = ("llava", "qwen2_5_vl", "gemma3", "mllama")


def _in_text_tower(patterns: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(p.replace(r"^model\.", _TEXT_TOWER, 1) for p in patterns)


NORM_LAYOUTS: dict[str, tuple[str, ...]] = {
    "llama": _DECODER,
    "qwen2": _DECODER,
    "qwen3": _DECODER,
    "mistral": _DECODER,
    "phi3": _DECODER,
    "gemma2": _GEMMA,
    "gemma3_text": _GEMMA,
    "gpt2": _GPT2,
    "llava": _in_text_tower(_DECODER),
    "qwen2_5_vl": _in_text_tower(_DECODER),
    "mllama": _in_text_tower(_DECODER),  # includes the cross-attention layers' norms (they act on image prompts)
    "gemma3": _in_text_tower(_GEMMA),
}


def model_family(model: nn.Module) -> str:
    return str(getattr(model.config, "model_type", type(model).__name__))


def find_norm_modules(model: nn.Module, override: str | Sequence[str] | None = None) -> dict[str, int]:
    """Names of the backbone's normalisation modules -> their hidden size, in forward order.

    ``override`` is either a list of exact module names or one regular expression over module names.
    """
    modules = dict(model.named_modules())
    family = model_family(model)
    if isinstance(override, str):
        try:
            pattern = re.compile(override)
        except re.error as exc:
            raise DsoError(f"model.norm_modules is not a valid regular expression: {exc}") from None
        names = [n for n in modules if n and pattern.search(n)]
        source = f"model.norm_modules={override!r}"
    elif override:
        unknown = [n for n in override if n not in modules]
        if unknown:
            raise DsoError(f"model.norm_modules names {unknown[0]!r}, which is not a module of this {family} model")
        names = list(override)
        source = "model.norm_modules"
    else:
        if family not in NORM_LAYOUTS:
            known = ", ".join(sorted(NORM_LAYOUTS))
            raise DsoError(
                f"no norm layout is registered for model family {family!r} (known: {known}); "
                "set model.norm_modules to a list of module names or a regex"
            )
        patterns = [re.compile(p) for p in NORM_LAYOUTS[family]]
        names = [n for n in modules if any(p.search(n) for p in patterns)]
        source = f"the {family} layout"
    if not names:
        raise DsoError(f"{source} matches no normalisation module of this {family} model; set model.norm_modules")
    return {name: _hidden_size(model, name, modules[name]) for name in names}


def within_depth(model: nn.Module, modules: Mapping[str, int], depth: Sequence[float]) -> dict[str, int]:
    """The entries of ``modules`` (norm name -> size) that sit in the part ``[start, end)`` of the
    backbone's decoder layers, as fractions of its depth: layer ``i`` of ``L`` is in when
    ``start <= i / L < end``; a norm after the last layer (the final norm) counts as depth 1 and is in
    only when ``end >= 1``. The same setting means the same share of depth in every family."""
    start, end = (float(x) for x in depth)
    if not 0.0 <= start < end <= 1.0:
        raise DsoError(f"a depth range must be two fractions 0 <= start < end <= 1, not {list(depth)}")
    layers = find_decoder_layers(model)
    chosen = {}
    for name, size in modules.items():
        index = next((i for i, layer in enumerate(layers) if name.startswith(layer + ".")), None)
        at = 1.0 if index is None else index / len(layers)
        if start <= at < end or (index is None and end >= 1.0):
            chosen[name] = size
    if not chosen:
        raise DsoError(f"the depth range {[start, end]} holds none of the {len(modules)} norms of this model")
    return chosen


def _hidden_size(model: nn.Module, name: str, module: nn.Module) -> int:
    weight = getattr(module, "weight", None)
    if weight is not None and weight.dim() == 1:
        return int(weight.shape[0])
    config = getattr(model.config, "text_config", None) or model.config
    size = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None)
    if size is None:
        raise DsoError(f"cannot tell the output size of module {name!r}")
    return int(size)


LAYER_LAYOUTS: dict[str, str] = {
    **dict.fromkeys(("llama", "qwen2", "qwen3", "mistral", "phi3", "gemma2", "gemma3_text"), r"^model\.layers\.\d+$"),
    "gpt2": r"^transformer\.h\.\d+$",
    **dict.fromkeys(VLM_FAMILIES, _TEXT_TOWER + r"layers\.\d+$"),
}
"""Per family, the decoder layers of the language backbone, whose outputs are the residual stream."""


def find_decoder_layers(model: nn.Module) -> list[str]:
    """Names of the backbone's decoder layers, in forward order (their outputs: the residual stream)."""
    return _layout_matches(model, LAYER_LAYOUTS, "decoder-layer", "decoder layer")


def _layout_matches(model: nn.Module, layouts: dict[str, str], layout: str, what: str) -> list[str]:
    """The module names the model family's pattern in ``layouts`` matches, in forward order."""
    family = model_family(model)
    if family not in layouts:
        raise DsoError(f"no {layout} layout is registered for model family {family!r}")
    pattern = re.compile(layouts[family])
    names = [name for name, _ in model.named_modules() if pattern.search(name)]
    if not names:
        raise DsoError(f"the {family} layout matches no {what} of this model")
    return names


HEAD_LAYOUTS: dict[str, str] = {
    **dict.fromkeys(
        ("llama", "qwen2", "qwen3", "mistral", "phi3", "gemma2", "gemma3_text"),
        r"^model\.layers\.\d+\.self_attn\.o_proj$",
    ),
    "gpt2": r"^transformer\.h\.\d+\.attn\.c_proj$",
    **dict.fromkeys(VLM_FAMILIES, _TEXT_TOWER + r"layers\.\d+\.self_attn\.o_proj$"),
}
"""Per family, each attention block's output projection: its input is the concatenated head outputs."""


def find_head_projections(model: nn.Module) -> tuple[list[str], int]:
    """Names of the attention output projections in forward order, and the number of heads per layer."""
    names = _layout_matches(model, HEAD_LAYOUTS, "attention-head", "attention output projection")
    config = getattr(model.config, "text_config", None) or model.config
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_head", None)
    if not heads:
        raise DsoError(f"the {model_family(model)} layout matches no attention output projection of this model")
    return names, int(heads)


def layer_modules(model: nn.Module, layers: Sequence[int] | None, what: str) -> list[str]:
    """Decoder-layer module names for layer indices (negative counts from the end); default: the middle.
    ``what`` names the method in the error (``caa layers [40] out of range ...``)."""
    names = find_decoder_layers(model)
    chosen = [len(names) // 2] if not layers else list(layers)
    try:
        return [names[i] for i in chosen]
    except IndexError:
        raise DsoError(f"{what} layers {chosen} out of range: the model has {len(names)} decoder layers") from None
