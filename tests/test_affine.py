"""The affine steering hook: exact identity at ω = 0, the stated formula, hooks always removed."""

import pytest
import torch

from dso_cli.models.layouts import find_norm_modules
from dso_cli.steering.affine import apply_affine, init_affine_params
from tests.conftest import build_tiny_model


@pytest.fixture
def model(tokenizer):
    return build_tiny_model("llama", tokenizer)


@pytest.fixture
def params(model):
    params = init_affine_params(find_norm_modules(model))
    torch.manual_seed(1)
    with torch.no_grad():
        for p in params.values():
            p.normal_(0, 0.5)
    return params


def ids():
    return torch.tensor([[5, 17, 42, 99, 7, 3]])


def hook_count(model) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


def test_zero_strength_is_exactly_the_base_model(model, params):
    base = model(ids()).logits
    with apply_affine(model, params, 0.0):
        assert torch.equal(model(ids()).logits, base)


def test_zero_parameters_are_exactly_the_base_model(model):
    base = model(ids()).logits
    with apply_affine(model, init_affine_params(find_norm_modules(model)), 1.0):
        assert torch.equal(model(ids()).logits, base)


def test_nonzero_steering_changes_logits_and_strength_is_live(model, params):
    base = model(ids()).logits
    with apply_affine(model, params, 1.0) as handle:
        full = model(ids()).logits
        handle.strength = 0.5
        half = model(ids()).logits
    assert not torch.allclose(full, base) and not torch.allclose(half, full)


def test_hook_applies_the_formula(model, params):
    name = next(iter(find_norm_modules(model)))
    module = dict(model.named_modules())[name]
    captured = {}
    module.register_forward_hook(lambda m, i, o: captured.setdefault("h", o.clone()))
    with apply_affine(model, {k: v for k, v in params.items() if k.startswith(name + ".")}, 0.3):
        handle = module.register_forward_hook(lambda m, i, o: captured.setdefault("steered", o.clone()))
        model(ids())
        handle.remove()
    a, b, h = params[f"{name}.a"], params[f"{name}.b"], captured["h"]
    torch.testing.assert_close(captured["steered"], h + 0.3 * (a * h + b))


def test_bfloat16_outputs_are_steered_in_float32_and_rounded_once(model):
    """In bfloat16 the hook computes ``h + ω(a⊙h + b)`` in float32 and rounds the sum once: term-by-term
    bf16 arithmetic would round a small trained (a, b) away."""
    model = model.to(torch.bfloat16)
    name = next(iter(find_norm_modules(model)))
    module = dict(model.named_modules())[name]
    params = init_affine_params(find_norm_modules(model))
    torch.manual_seed(2)
    with torch.no_grad():
        for key, p in params.items():
            p.normal_(0, 0.01) if key.startswith(name + ".") else p.zero_()
    captured = {}
    module.register_forward_hook(lambda m, i, o: captured.setdefault("h", o.clone()))
    with apply_affine(model, params, 0.7):
        handle = module.register_forward_hook(lambda m, i, o: captured.setdefault("steered", o.clone()))
        model(ids())
        handle.remove()
    a, b, h = params[f"{name}.a"], params[f"{name}.b"], captured["h"]
    assert captured["steered"].dtype == torch.bfloat16
    assert torch.equal(captured["steered"], (h.float() + 0.7 * (a * h.float() + b)).to(torch.bfloat16))
    term_by_term = h + 0.7 * (a.to(torch.bfloat16) * h + b.to(torch.bfloat16))
    assert not torch.equal(captured["steered"], term_by_term)  # the two differ on real outputs


def test_hooks_removed_on_exit_and_on_exception(model, params):
    before = hook_count(model)
    with apply_affine(model, params, 1.0):
        assert hook_count(model) == before + len(params) // 2
    assert hook_count(model) == before
    with pytest.raises(RuntimeError, match="boom"), apply_affine(model, params, 1.0):
        raise RuntimeError("boom")
    assert hook_count(model) == before


def test_model_is_unchanged_after_steering(model, params):
    base = model(ids()).logits
    with apply_affine(model, params, 1.0):
        model(ids())
    assert torch.equal(model(ids()).logits, base)


def test_strength_above_one_warns(model, params):
    with pytest.warns(UserWarning, match="extrapolates"), apply_affine(model, params, 1.5):
        pass
