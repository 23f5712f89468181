"""The per-neuron affine transform on normalisation outputs: ``h' = h + ω (a ⊙ h + b)``.

Applied with forward hooks (never by replacing modules) inside a context manager that removes its
hooks on exit, exceptions included, so one set of parameters serves a whole strength sweep. DSO
trains ``a`` and ``b``; closed-form methods of the same family can reuse this module as they are.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from dso_cli.errors import DsoError
from dso_cli.steering.hooks import hooks_on
from dso_cli.steering.method import SteeringMethod


class SteeringHandle:
    """What the context manager yields: the live strength, changeable between forward passes."""

    def __init__(self, strength: float, limit: float = 1.0) -> None:
        self.limit = limit  # strengths above it extrapolate beyond what the method was fitted for
        self.strength = strength

    @property
    def strength(self) -> float:
        return self._strength

    @strength.setter
    def strength(self, value: float) -> None:
        value = float(value)
        if value > self.limit:
            warnings.warn(
                f"steering strength {value} > {self.limit:g} extrapolates beyond the fitted transform", stacklevel=3
            )
        self._strength = value


def init_affine_params(modules: Mapping[str, int], device: torch.device | str = "cpu") -> dict[str, Tensor]:
    """Zero ``a`` and ``b`` (float32 leaves with gradients) for each module name -> hidden size."""
    params: dict[str, Tensor] = {}
    for name, size in modules.items():
        params[f"{name}.a"] = torch.zeros(size, device=device, requires_grad=True)
        params[f"{name}.b"] = torch.zeros(size, device=device, requires_grad=True)
    return params


def module_names(params: Mapping[str, Tensor]) -> list[str]:
    """Module names in ``params`` (keys ``<module>.a`` / ``<module>.b``), in insertion order."""
    return list(dict.fromkeys(key.rsplit(".", 1)[0] for key in params))


@contextmanager
def apply_affine(model: nn.Module, params: Mapping[str, Tensor], strength: float = 1.0) -> Iterator[SteeringHandle]:
    """Hook ``h + ω (a ⊙ h + b)`` onto every module named in ``params`` for the duration of the block.

    Gradients flow into ``params`` when they require them. At strength 0 the hooks return the output
    untouched, so the model is exactly the base model.
    """
    handle = SteeringHandle(strength)
    per_module = {name: (params[f"{name}.a"], params[f"{name}.b"]) for name in module_names(params)}
    with hooks_on(model, per_module, lambda ab: _make_hook(handle, *ab)):
        yield handle


def _make_hook(handle: SteeringHandle, a: Tensor, b: Tensor):
    def hook(module: nn.Module, inputs: tuple, output: Tensor) -> Tensor | None:
        strength = handle.strength
        if strength == 0.0:
            return None
        if output.shape[-1] != a.shape[0]:
            raise DsoError(f"steering vector of size {a.shape[0]} does not fit an output of size {output.shape[-1]}")
        # in float32, cast back once: in bfloat16 a small trained (a, b) would be rounded away term by term
        h = output.float()
        return (h + strength * (a.to(output.device).float() * h + b.to(output.device).float())).to(output.dtype)

    return hook


class AffineMethod(SteeringMethod):
    """Methods whose tensors are ``a`` and ``b`` per norm (DSO, mean matching): one hook, prunable,
    foldable into an exported checkpoint, shown as |a| + |b| per layer."""

    placement = "affine"
    affine = True
    knob = "ω"

    @classmethod
    def apply(cls, model: nn.Module, tensors: Mapping[str, Tensor], strength: float):
        return apply_affine(model, tensors, strength)
