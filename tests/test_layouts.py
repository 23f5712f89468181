"""The norm-layout registry: every backbone norm of each family, overrides, clear errors."""

import pytest
import torch

from dso_cli.errors import DsoError
from dso_cli.models.layouts import NORM_LAYOUTS, find_norm_modules
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
