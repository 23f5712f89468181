"""The norm-layout registry: every backbone norm of each family, overrides, clear errors."""

import pytest
import torch

from dso_cli.errors import DsoError
from dso_cli.models.layouts import NORM_LAYOUTS, find_norm_modules, within_depth
from tests.conftest import build_tiny_model

GEMMA_NORMS = ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm", "post_feedforward_layernorm")
EXPECTED = {
    "llama": [f"model.layers.{i}.{n}" for i in range(2) for n in ("input_layernorm", "post_attention_layernorm")]
    + ["model.norm"],
    "gemma2": [f"model.layers.{i}.{n}" for i in range(2) for n in GEMMA_NORMS] + ["model.norm"],
    "gpt2": [f"transformer.h.{i}.{n}" for i in range(2) for n in ("ln_1", "ln_2")] + ["transformer.ln_f"],
}


FAMILIES = ["llama", "qwen2", "qwen3", "mistral", "phi3", "gemma2", "gemma3_text", "gpt2"]


@pytest.mark.parametrize("family", FAMILIES)
def test_registry_finds_every_backbone_norm(family, tokenizer):
    model = build_tiny_model(family, tokenizer)
    found = find_norm_modules(model)
    expected = EXPECTED.get({"gemma3_text": "gemma2"}.get(family, family), EXPECTED["llama"])
    assert sorted(found) == sorted(expected)
    assert set(found.values()) == {32}
    modules = dict(model.named_modules())
    assert all(isinstance(modules[n], torch.nn.Module) and "norm" in type(modules[n]).__name__.lower() for n in found)


@pytest.mark.parametrize("family", ["llama", "gemma2", "gpt2"])
def test_a_depth_range_picks_the_same_share_of_layers_in_every_family(family, tokenizer):
    """[0, .5] is the first of the two layers' norms, [.5, 1] the second's and the final norm, [0, 1]
    every norm: the same setting means the same part of the depth whatever the family's names."""
    model = build_tiny_model(family, tokenizer)
    norms = find_norm_modules(model)
    first, second = within_depth(model, norms, [0, 0.5]), within_depth(model, norms, [0.5, 1])
    assert within_depth(model, norms, [0, 1]) == norms
    assert set(first) | set(second) == set(norms) and not set(first) & set(second)
    assert all(".0." in name for name in first) and len(first) == (len(norms) - 1) // 2
    assert any(".1." not in name and ".0." not in name for name in second), "the final norm is in [.5, 1]"
    with pytest.raises(DsoError, match="depth range"):
        within_depth(model, norms, [0.7, 0.2])
    with pytest.raises(DsoError, match="holds none"):
        within_depth(model, norms, [0.1, 0.2])


def test_every_issue_family_is_registered():
    assert {"llama", "qwen2", "qwen3", "gemma2", "gemma3_text", "mistral", "phi3", "gpt2"} <= set(NORM_LAYOUTS)


def test_override_by_names_and_by_regex(tokenizer):
    model = build_tiny_model("llama", tokenizer)
    assert list(find_norm_modules(model, ["model.norm"])) == ["model.norm"]
    assert list(find_norm_modules(model, r"layers\.1\.input_layernorm$")) == ["model.layers.1.input_layernorm"]


def test_clear_errors(tokenizer):
    model = build_tiny_model("llama", tokenizer)
    with pytest.raises(DsoError, match="matches no normalisation module"):
        find_norm_modules(model, r"^nothing_here$")
    with pytest.raises(DsoError, match="not a module"):
        find_norm_modules(model, ["model.nope"])
    with pytest.raises(DsoError, match="not a valid regular expression"):
        find_norm_modules(model, "(")
    model.config.model_type = "mystery"
    with pytest.raises(DsoError, match="no norm layout is registered for model family 'mystery'"):
        find_norm_modules(model)
