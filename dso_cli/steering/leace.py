"""LEACE concept erasure (Belrose et al. 2023) of gender, through the ``concept-erasure`` package.

The eraser is fitted on a decoder layer's output at the answer position of the ambiguous training
items' completions, labelled with the gender their option denotes. After erasure no linear probe can
predict that gender better than a constant (on the fitted distribution). Strength ``α`` interpolates:
``h + α · (erase(h) − h)``; 1 is full erasure, applied at every token.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from dso_cli.config.group_schemas import LeaceOptions
from dso_cli.errors import DsoError
from dso_cli.models.layouts import layer_modules
from dso_cli.models.loading import LoadedModel
from dso_cli.steering.activations import ActivationStore, usable_items
from dso_cli.steering.affine import SteeringHandle
from dso_cli.steering.artifact import Artifact
from dso_cli.steering.hooks import hooks_on, output_tensor, with_hidden
from dso_cli.steering.method import FitJob, SteeringMethod

STRENGTH = {
    "semantics": "h + strength * (erase(h) - h) at the chosen layers' outputs; 0 = base, 1 = gender erased",
    "range": [0.0, 1.0],
    "default_grid": "0:1:0.25",
}
PARTS = ("proj_left", "proj_right", "bias")


def gender_labels(items: Sequence[Mapping[str, Any]]) -> Tensor:
    """1 for a female option, 0 for a male one: pro completions first, then anti (as the activations)."""
    usable = usable_items(items)
    labels = [it["option_groups"][it[f"{kind}_option"]] == "female" for kind in ("pro", "anti") for it in usable]
    return torch.tensor(labels, dtype=torch.float32)


def fit_eraser(x: Tensor, z: Tensor) -> dict[str, Tensor]:
    """LEACE projection ``(proj_left, proj_right, bias)`` erasing ``z`` from ``x``."""
    from concept_erasure import LeaceEraser

    if z.min() == z.max():
        raise DsoError("leace needs completions of both genders to erase gender")
    eraser = LeaceEraser.fit(x.double(), z.double())
    return {part: getattr(eraser, part).float().contiguous() for part in PARTS}


def erase(h: Tensor, proj_left: Tensor, proj_right: Tensor, bias: Tensor) -> Tensor:
    return h - ((h - bias) @ proj_right.mH) @ proj_left.mH


def fit_leace(loaded: LoadedModel, store: ActivationStore, layers: Sequence[int] | None = None) -> Artifact:
    names = layer_modules(loaded.model, layers, "leace")
    acts = store.outputs(names)
    z = gender_labels(store.items)
    tensors = {}
    for name in names:
        x = torch.cat([acts["pro"][name], acts["anti"][name]])
        for part, value in fit_eraser(x, z).items():
            tensors[f"{name}.{part}"] = value
    return Artifact.create(
        "leace",
        tensors,
        model=loaded.describe(),
        hyperparameters={"layers": list(layers) if layers else None, "modules": names, "n_items": len(z) // 2},
        strength=STRENGTH,
    )


@contextmanager
def apply_leace(model: nn.Module, tensors: Mapping[str, Tensor], strength: float = 1.0) -> Iterator[SteeringHandle]:
    handle = SteeringHandle(strength)
    names = dict.fromkeys(key.rsplit(".", 1)[0] for key in tensors)
    per_module = {name: [tensors[f"{name}.{part}"] for part in PARTS] for name in names}
    with hooks_on(model, per_module, lambda parts: _make_hook(handle, parts)):
        yield handle


def _make_hook(handle: SteeringHandle, parts: list[Tensor]):
    def hook(module: nn.Module, inputs: tuple, output: Any) -> Any:
        if handle.strength == 0.0:
            return None
        hidden = output_tensor(output)
        if hidden.shape[-1] != parts[2].shape[-1]:
            raise DsoError(f"eraser of size {parts[2].shape[-1]} does not fit an output of {hidden.shape[-1]}")
        left, right, bias = (p.to(hidden.device, torch.float32) for p in parts)
        h32 = hidden.float()
        steered = (h32 + handle.strength * (erase(h32, left, right, bias) - h32)).to(hidden.dtype)
        return with_hidden(output, steered)

    return hook


class LEACE(SteeringMethod):
    """LEACE erasure of gender at decoder layers (option: ``layers``; default the middle one)."""

    name = "leace"
    options_class = LeaceOptions
    strength = STRENGTH

    def records(self, model: nn.Module, norm_modules: Any, can_select: bool) -> tuple[list[str], list[str]]:
        return layer_modules(model, self.options.layers, "leace"), []

    def fit(self, job: FitJob) -> Artifact:
        return fit_leace(job.loaded, job.activations(), layers=self.options.layers)

    @classmethod
    def apply(cls, model: nn.Module, tensors: Mapping[str, Tensor], strength: float):
        return apply_leace(model, tensors, strength)
