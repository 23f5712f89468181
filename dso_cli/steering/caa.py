"""Contrastive Activation Addition (Rimsky et al. 2024) as a baseline.

The steering vector of a decoder layer is the mean difference of its output (the residual stream) at
the answer position between anti- and pro-stereotypical completions of the ambiguous training items;
applying it adds ``α · v`` to that layer's output at every token. Strength α = 1 adds the mean
difference once; unlike DSO, nothing makes bias fall monotonically in α.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from torch import Tensor, nn

from dso_cli.errors import DsoError
from dso_cli.models.layouts import find_decoder_layers
from dso_cli.models.loading import LoadedModel
from dso_cli.scoring import OptionScorer
from dso_cli.steering.activations import completion_activations
from dso_cli.steering.affine import SteeringHandle
from dso_cli.steering.artifact import APPLIERS, Artifact
from dso_cli.steering.hooks import hooks_on

STRENGTH = {
    "semantics": "residual stream of each chosen layer + alpha * (mean anti - mean pro activation); 0 = base",
    "range": [0.0, 8.0],
    "default_grid": "[0,1,2,4,8]",
}


def mean_difference(pro: Tensor, anti: Tensor) -> Tensor:
    """``mean(anti) − mean(pro)`` over items (rows)."""
    return anti.mean(0) - pro.mean(0)


def resolve_layers(model: nn.Module, layers: Sequence[int] | None) -> list[str]:
    """Decoder-layer module names for layer indices (negative counts from the end); default: the middle."""
    names = find_decoder_layers(model)
    chosen = [len(names) // 2] if not layers else list(layers)
    try:
        return [names[i] for i in chosen]
    except IndexError:
        raise DsoError(f"caa layers {chosen} out of range: the model has {len(names)} decoder layers") from None


def fit_caa(
    loaded: LoadedModel, scorer: OptionScorer, items: Sequence[Mapping[str, Any]], layers: Sequence[int] | None = None
) -> Artifact:
    names = resolve_layers(loaded.model, layers)
    acts = completion_activations(scorer, items, names)
    if not len(next(iter(acts["pro"].values()))):
        raise DsoError("caa needs ambiguous training items with a pro- and an anti-stereotypical option")
    tensors = {f"{name}.v": mean_difference(acts["pro"][name], acts["anti"][name]) for name in names}
    return Artifact.create(
        "caa",
        tensors,
        model=loaded.describe(),
        hyperparameters={
            "layers": list(layers) if layers else None,
            "modules": names,
            "n_items": len(acts["pro"][names[0]]),
        },
        strength=STRENGTH,
    )


@contextmanager
def apply_additive(model: nn.Module, tensors: Mapping[str, Tensor], strength: float = 1.0) -> Iterator[SteeringHandle]:
    """Add ``strength · v`` to the output of every module named in ``tensors`` (keys ``<module>.v``)."""
    handle = SteeringHandle(strength, limit=STRENGTH["range"][1])
    per_module = {key.rsplit(".", 1)[0]: vector for key, vector in tensors.items()}
    with hooks_on(model, per_module, lambda vector: _make_hook(handle, vector)):
        yield handle


def _make_hook(handle: SteeringHandle, vector: Tensor):
    def hook(module: nn.Module, inputs: tuple, output: Any) -> Any:
        if handle.strength == 0.0:
            return None
        hidden = output[0] if isinstance(output, tuple) else output
        if hidden.shape[-1] != vector.shape[0]:
            raise DsoError(
                f"steering vector of size {vector.shape[0]} does not fit an output of size {hidden.shape[-1]}"
            )
        steered = hidden + handle.strength * vector.to(hidden.device, hidden.dtype)
        return (steered, *output[1:]) if isinstance(output, tuple) else steered

    return hook


APPLIERS["caa"] = apply_additive
