"""CPU linear kernels: oneDNN gives stock results where it applies, nothing else changes, models are restored."""

import pytest
import torch

from dso_cli.errors import DsoError
from dso_cli.models import linear_kernels
from dso_cli.models.linear_kernels import linear, linear_kernel, onednn_available, resolve_kernel
from dso_cli.scoring import OptionScorer
from tests.conftest import build_tiny_model

pytestmark = pytest.mark.skipif(not onednn_available(), reason="this PyTorch build has no oneDNN linear")


@pytest.mark.parametrize("seed", range(6))
def test_onednn_linear_equals_stock(seed):
    gen = torch.Generator().manual_seed(seed)
    rows, d_in, d_out = (int(torch.randint(1, 300, (1,), generator=gen)) for _ in range(3))
    x = torch.randn(2, rows, d_in, generator=gen)
    w = torch.randn(d_out, d_in, generator=gen)
    b = torch.randn(d_out, generator=gen) if seed % 2 else None
    with torch.no_grad():
        stock = torch.nn.functional.linear(x, w, b)
        torch.testing.assert_close(linear(x, w, b, "onednn"), stock, atol=1e-4, rtol=1e-5)
        transposed = x.transpose(0, 1)  # a non-contiguous input
        torch.testing.assert_close(
            linear(transposed, w, b, "onednn"), torch.nn.functional.linear(transposed, w, b), atol=1e-4, rtol=1e-5
        )


def test_trainable_weights_and_other_dtypes_take_the_stock_kernel(monkeypatch):
    calls = []
    monkeypatch.setattr(linear_kernels, "_onednn_linear", lambda *a: calls.append(a) or torch.zeros(()))
    x, w = torch.randn(4, 3, requires_grad=True), torch.randn(5, 3, requires_grad=True)
    out = linear(x, w, None, "onednn")  # a weight that needs its gradient: stock
    out.sum().backward()
    assert x.grad is not None and not calls
    with torch.no_grad():
        linear(x.double(), w.double(), None, "onednn")  # float64: stock
        linear(x[0], w, None, "onednn")  # 1-D input: stock
        assert not calls
        linear(x, w, None, "onednn")
    assert len(calls) == 1


def test_context_patches_plain_linears_only_and_restores_them():
    class Custom(torch.nn.Linear):
        def forward(self, x):
            return super().forward(x) + 1

    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), Custom(4, 2))
    seen = []
    model[0].register_forward_hook(lambda m, args, out: seen.append(out))
    x = torch.randn(5, 3)
    with torch.no_grad():
        stock = model(x)
        with linear_kernel(model, "onednn"):
            assert "forward" in vars(model[0]) and "forward" not in vars(model[2])
            torch.testing.assert_close(model(x), stock, atol=1e-5, rtol=1e-5)
        assert len(seen) == 2  # hooks on a patched layer still run
        with pytest.raises(RuntimeError, match="boom"), linear_kernel(model, "onednn"):
            raise RuntimeError("boom")
    assert all("forward" not in vars(m) for m in model)  # restored, also after an exception
    with linear_kernel(model, "stock"):
        assert "forward" not in vars(model[0])


def test_resolve_kernel():
    model = torch.nn.Linear(64, 256)
    assert resolve_kernel("stock", model, 32) == "stock"
    assert resolve_kernel("onednn", model, 32) == "onednn"
    assert resolve_kernel("auto", model, 32) in ("stock", "onednn")
    assert resolve_kernel("auto", model.double(), 32) == "stock"  # no float32 layer to speed up
    assert resolve_kernel("onednn", model.double(), 32) == "stock"  # it would never apply
    with pytest.raises(DsoError, match=r"scoring\.cpu_linear='fast'"):
        resolve_kernel("fast", model, 32)


def test_scorer_on_onednn_equals_stock_and_training_is_unchanged(tokenizer, items):
    model = build_tiny_model("llama", tokenizer)
    fast = OptionScorer(model, tokenizer, cpu_linear="onednn", tree_tokens=48)
    stock = OptionScorer(model, tokenizer, cpu_linear="stock", tree_tokens=48)
    assert (fast.linear_kernel, stock.linear_kernel) == ("onednn", "stock")
    with torch.no_grad():
        torch.testing.assert_close(fast.logprobs(items), stock.logprobs(items), atol=1e-5, rtol=1e-5)
        rows = OptionScorer(model, tokenizer, cpu_linear="onednn", prefix_tree=False)
        torch.testing.assert_close(rows.logprobs(items), stock.logprobs(items), atol=1e-5, rtol=1e-5)
        seqs = [[5, 6, 7, 8], [9, 10]]
        torch.testing.assert_close(fast.token_logprobs(seqs)[0], stock.token_logprobs(seqs)[0], atol=1e-5, rtol=0)
    assert all("forward" not in vars(m) for m in model.modules())


def test_training_gradients_through_onednn_equal_stock(tokenizer, items):
    from dso_cli.models.layouts import find_norm_modules
    from dso_cli.steering.affine import apply_affine, init_affine_params

    model = build_tiny_model("llama", tokenizer)
    params = init_affine_params(find_norm_modules(model))
    with torch.no_grad():
        for p in params.values():
            p.copy_(torch.randn_like(p) * 0.1)
    grads = {}
    for kernel in ("onednn", "stock"):
        scorer = OptionScorer(model, tokenizer, cpu_linear=kernel, tree_tokens=48)
        for p in params.values():
            p.grad = None
        with apply_affine(model, params, 1.0):
            logprobs = scorer.logprobs(items, grad=True)
            text, _ = scorer.token_logprobs([[5, 6, 7, 8], [9, 10]])
            (logprobs.sum() + text[:, :, :50].sum()).backward()
        grads[kernel] = {name: p.grad.clone() for name, p in params.items()}
    for name in params:
        torch.testing.assert_close(grads["onednn"][name], grads["stock"][name], atol=1e-4, rtol=1e-4)


def test_onednn_gradients_only_for_frozen_weights():
    x = torch.randn(3, 8, requires_grad=True)
    frozen, trainable = torch.randn(4, 8), torch.randn(4, 8, requires_grad=True)
    assert type(linear_kernels.linear(x, frozen, None, "onednn").grad_fn).__name__ == "FrozenWeightLinearBackward"
    y = linear_kernels.linear(x, trainable, None, "onednn")
    y.sum().backward()
    assert trainable.grad is not None, "a trainable weight gets its gradient (the stock kernel)"
    with linear_kernels.onednn_gradient_passes(False):
        assert type(linear_kernels.linear(x, frozen, None, "onednn").grad_fn).__name__ != "FrozenWeightLinearBackward"


def test_scorer_keeps_stock_kernels_when_the_probe_disagrees(tokenizer, monkeypatch):
    model = build_tiny_model("llama", tokenizer)
    assert onednn_available()  # probed (and cached) before the kernel is broken below
    real = linear_kernels._onednn_linear
    monkeypatch.setattr(linear_kernels, "_onednn_linear", lambda x, w, b: real(x, w, b) * 1.01)
    assert OptionScorer(model, tokenizer, cpu_linear="onednn").linear_kernel == "stock"
