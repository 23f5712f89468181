"""Folding ``(1 + ωa)⊙y + ωb`` into a model's norms: the multiplicative part into the norm's weight (its
convention, ``w⊙n(x)`` or ``(1 + w)⊙n(x)``, measured on each module), the additive part into its bias
where it has one, or into an added ``bias`` that the export's modeling file provides."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from dso_cli.errors import DsoError
from dso_cli.steering.affine import module_names

Convention = Literal["scale", "offset"]
"""``scale``: ``y = w⊙n(x) (+ β)``; ``offset``: ``y = (1 + w)⊙n(x) (+ β)``."""


@dataclass(frozen=True)
class FoldedNorm:
    """The new parameters of one norm module with the transform folded in."""

    name: str
    convention: Convention
    weight: Tensor  # in the module's weight dtype
    bias: Tensor | None  # the new bias (native or added); None where the norm needs none
    native_bias: bool  # the module has a bias of its own, which absorbed ωb

    @property
    def added_bias(self) -> bool:
        return self.bias is not None and not self.native_bias


def weight_convention(module: nn.Module, name: str) -> Convention:
    """Whether ``module`` computes ``w⊙n(x)`` or ``(1 + w)⊙n(x)``, measured by running it with ``w`` = 0 and 1.

    With its bias (if any) also zeroed, the output at ``w = 0`` is ``c·n(x)`` and at ``w = 1`` it is
    ``(c + 1)·n(x)``; ``c`` (0 or 1) is the convention. Anything else is not a per-channel scale.
    """
    weight, bias = _norm_parameters(module, name)
    generator = torch.Generator().manual_seed(0)
    x = (torch.randn(2, 3, weight.shape[0], generator=generator) * 2 + 0.5).to(weight.device, weight.dtype)
    saved = [(p, p.detach().clone()) for p in (weight, bias) if p is not None]
    try:
        with torch.no_grad():
            if bias is not None:
                bias.zero_()
            weight.zero_()
            at_zero = _plain_output(module, x).float()
            weight.fill_(1.0)
            at_one = _plain_output(module, x).float()
    finally:
        with torch.no_grad():
            for param, value in saved:
                param.copy_(value)
    normalised = at_one - at_zero
    scale = float(normalised.abs().max())
    tol = 64 * torch.finfo(weight.dtype).eps * max(scale, 1.0)
    if not scale > 0:
        raise DsoError(f"cannot tell how norm {name!r} uses its weight (its output does not depend on it)")
    if float(at_zero.abs().max()) <= tol:
        return "scale"
    if float((at_zero - normalised).abs().max()) <= tol:
        return "offset"
    raise DsoError(f"norm {name!r} is neither w*n(x) nor (1+w)*n(x) in its weight; its transform cannot be folded")


def fold_norms(model: nn.Module, tensors: Mapping[str, Tensor], strength: float) -> list[FoldedNorm]:
    """Each hooked norm's parameters with ``h + α(a⊙h + b)`` folded in (the model is not changed).

    Written as ``new = old + α(a⊙old + b)`` on the effective scale and shift, so α = 0 reproduces the
    weights bit for bit; computed in float64, stored in the parameter's dtype.
    """
    modules = dict(model.named_modules())
    folds = []
    for name in module_names(tensors):
        if name not in modules:
            raise DsoError(f"the model has no module {name!r} that this steering artifact targets")
        module = modules[name]
        weight, bias = _norm_parameters(module, name)
        a, b = tensors[f"{name}.a"].double().cpu(), tensors[f"{name}.b"].double().cpu()
        if a.shape != weight.shape or b.shape != weight.shape:
            raise DsoError(f"steering vectors of size {a.numel()} do not fit norm {name!r} of size {weight.numel()}")
        convention = weight_convention(module, name)
        w = weight.detach().double().cpu()
        effective = w if convention == "scale" else 1.0 + w
        new_weight = (w + strength * a * effective).to(weight.dtype)
        if bias is not None:
            beta = bias.detach().double().cpu()
            new_bias: Tensor | None = (beta + strength * (a * beta + b)).to(bias.dtype)
        else:
            added = strength * b
            new_bias = added.to(weight.dtype) if bool(added.ne(0).any()) else None
        folds.append(FoldedNorm(name, convention, new_weight, new_bias, bias is not None))
    return folds


def write_folds(model: nn.Module, folds: Sequence[FoldedNorm]) -> list[str]:
    """Put the folded parameters into ``model`` in place; returns the norms that got an added bias.

    An added bias is registered as the module's ``bias`` parameter with a forward hook that adds it,
    exactly what the saved modeling file does on load, so the model in memory is the exported one.
    """
    modules = dict(model.named_modules())
    added = []
    with torch.no_grad():
        for fold in folds:
            module = modules[fold.name]
            module.weight.copy_(fold.weight.to(module.weight.device))
            if fold.native_bias:
                module.bias.copy_(fold.bias.to(module.bias.device))
            elif fold.bias is not None:
                device = module.weight.device
                module.bias = nn.Parameter(fold.bias.to(device), requires_grad=False)
                module.register_forward_hook(add_norm_bias)
                added.append(fold.name)
    return added


def add_norm_bias(module: nn.Module, inputs: tuple, output: Tensor) -> Tensor:
    """Forward hook of a norm with an added bias: its output plus the bias (same as the modeling file's)."""
    return output + module.bias.to(output.device, output.dtype)


def _norm_parameters(module: nn.Module, name: str) -> tuple[nn.Parameter, nn.Parameter | None]:
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor):
        raise DsoError(f"norm {name!r} ({type(module).__name__}) has no weight to fold the transform into")
    if weight.dim() != 1:
        raise DsoError(f"module {name!r} ({type(module).__name__}) has no per-channel weight; it is not a norm")
    if weight.device.type == "meta":
        raise DsoError(f"the weight of norm {name!r} is offloaded; export without disk/CPU offloading")
    if hasattr(module, "bias") and module.bias is None:
        raise DsoError(f"norm {name!r} was built without its bias (bias=None); its shift cannot be exported")
    bias = getattr(module, "bias", None)
    return weight, bias if isinstance(bias, torch.Tensor) else None


def _plain_output(module: nn.Module, x: Tensor) -> Tensor:
    """The module's own output, without any forward hook registered on it."""
    return module.forward(x)


def _run_norm(module: nn.Module, x: Tensor) -> Tensor:
    """A norm's output (its forward hooks included) on ``x``, in float32 on the CPU."""
    weight = module.weight
    return module(x.to(weight.device, weight.dtype)).float().cpu()
