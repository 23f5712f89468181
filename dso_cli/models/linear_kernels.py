"""Which matrix-multiply library runs the linear layers of float32 passes on CPU.

PyTorch sends a float32 ``nn.Linear`` on CPU to MKL, which takes its widest code paths only on Intel
CPUs; on other x86 CPUs with AVX-512 (AMD Zen 4/5) it measures about half of what oneDNN, the library
PyTorch bundles for its own CPU kernels, reaches on the same product. ``kernel="auto"`` times both on
the model's own layer shape once per process and keeps the faster; the scorer then checks that its
scores do not move before it uses the choice (see ``OptionScorer``). Passes without gradients run
the product through oneDNN; passes with gradients (training the steering parameters) do too where
the layer's own weights are frozen, as they always are here: :class:`FrozenWeightLinear` runs the
forward product and the input gradient ``dY · W`` through oneDNN and computes no weight gradient.
Anything on an accelerator, other dtypes and trainable weights run the stock kernel.
"""

from __future__ import annotations

import contextvars
import functools
import time
import types
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

from dso_cli.errors import DsoError

KERNELS = ("auto", "onednn", "stock")


@functools.cache
def onednn_available() -> bool:
    """oneDNN's fused linear is present in this PyTorch build (it is private API, so probe for it)."""
    try:
        x, w = torch.ones(2, 3), torch.ones(4, 3)
        return bool(torch.equal(_onednn_linear(x, w, None), x @ w.T))
    except (AttributeError, RuntimeError):
        return False


def _onednn_linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def _usable(x: Tensor, weight: Tensor) -> bool:
    return (
        not torch.is_grad_enabled()
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and x.dim() >= 2
    )


_GRADIENT_PASSES = contextvars.ContextVar("onednn_gradient_passes", default=True)


@contextmanager
def onednn_gradient_passes(enabled: bool) -> Iterator[None]:
    """Within the block, passes with gradients use oneDNN (``True``, the default) or the stock kernel
    (as earlier versions did: the training benchmark's baseline)."""
    token = _GRADIENT_PASSES.set(enabled)
    try:
        yield
    finally:
        _GRADIENT_PASSES.reset(token)


def _usable_with_gradients(x: Tensor, weight: Tensor, bias: Tensor | None) -> bool:
    return (
        torch.is_grad_enabled()
        and _GRADIENT_PASSES.get()
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and x.dim() >= 2
        and not weight.requires_grad
        and (bias is None or not bias.requires_grad)
    )


class FrozenWeightLinear(torch.autograd.Function):
    """``x · Wᵀ + b`` through oneDNN with the gradient for ``x`` only (``W`` and ``b`` are frozen): the
    backward pass is one more oneDNN product, ``dY · W``, with ``W`` transposed once per call."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(weight)
        return _onednn_linear(x, weight, bias)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, None, None]:
        (weight,) = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None
        return _onednn_linear(grad_out.contiguous(), weight.t().contiguous(), None), None, None


def linear(x: Tensor, weight: Tensor, bias: Tensor | None, kernel: str) -> Tensor:
    """``F.linear`` through ``kernel`` (a resolved one: ``onednn`` or ``stock``) where it applies."""
    if kernel == "onednn" and _usable(x, weight):
        return _onednn_linear(x, weight, bias)
    if kernel == "onednn" and _usable_with_gradients(x, weight, bias):
        return FrozenWeightLinear.apply(x, weight, bias)
    return torch.nn.functional.linear(x, weight, bias)


def _onednn_forward(self: torch.nn.Linear, x: Tensor) -> Tensor:
    return linear(x, self.weight, self.bias, "onednn")


def resolve_kernel(kernel: str, model: torch.nn.Module, rows: int) -> str:
    """``onednn`` or ``stock`` for ``model``: ``auto`` picks oneDNN on CPU float32 models when it is
    at least 10 % faster on the widest linear layer of the backbone (not the output head, which scoring
    runs on a few rows only) at ``rows`` tokens (at most 1024). A model without CPU float32 linear
    layers gets ``stock`` either way: the kernel would never apply."""
    if kernel not in KERNELS:
        raise DsoError(f"scoring.cpu_linear={kernel!r}: expected one of {', '.join(KERNELS)}")
    if kernel == "stock":
        return "stock"
    if not onednn_available():
        if kernel == "onednn":
            raise DsoError("scoring.cpu_linear=onednn: this PyTorch build has no oneDNN linear kernel")
        return "stock"
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    linears = [
        m
        for m in _plain_linears(model)
        if m.weight.device.type == "cpu" and m.weight.dtype == torch.float32 and m is not head
    ]
    if not linears:
        return "stock"
    if kernel == "onednn":
        return "onednn"
    widest = max(linears, key=lambda m: m.weight.numel())
    out_features, in_features = widest.weight.shape
    return "onednn" if onednn_speedup(min(rows, 1024), in_features, out_features) >= 1.1 else "stock"


@functools.cache
def onednn_speedup(rows: int, in_features: int, out_features: int) -> float:
    """Stock time over oneDNN time of one ``[rows, in] @ [in, out]`` product (best of five each)."""
    x, w = torch.randn(rows, in_features), torch.randn(out_features, in_features)
    best = {}
    with torch.no_grad():
        for name, fn in (("stock", torch.nn.functional.linear), ("onednn", _onednn_linear)):
            fn(x, w, None)
            times = []
            for _ in range(5):
                start = time.perf_counter()
                fn(x, w, None)
                times.append(time.perf_counter() - start)
            best[name] = min(times)
    return best["stock"] / max(best["onednn"], 1e-9)


def _plain_linears(model: torch.nn.Module) -> list[torch.nn.Linear]:
    """``nn.Linear`` modules running the stock forward (quantised or LoRA subclasses are left alone)."""
    return [
        m
        for m in model.modules()
        if isinstance(m, torch.nn.Linear) and type(m).forward is torch.nn.Linear.forward and "forward" not in vars(m)
    ]


@contextmanager
def linear_kernel(model: torch.nn.Module, kernel: str) -> Iterator[None]:
    """Within the block, ``model``'s plain linear layers run through ``kernel`` (resolved) wherever it
    applies (CPU, float32, frozen weights); hooks on them still run. The model is restored on exit."""
    if kernel != "onednn":
        yield
        return
    patched = _plain_linears(model)
    for module in patched:
        module.forward = types.MethodType(_onednn_forward, module)
    try:
        yield
    finally:
        for module in patched:
            del module.forward
