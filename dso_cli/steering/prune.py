"""Magnitude pruning of an affine steering artifact: keep the neurons that carry the transform.

A neuron is one coordinate ``i`` of one hooked module; its weight is ``|a_i| + |b_i|``. All neurons of
all modules are ranked together (one global threshold, as in the DSO paper's sparsity study), the top
``keep`` fraction keeps its ``a_i``, ``b_i`` and the rest are set to zero, so a pruned neuron passes
its input through untouched. Pruning never changes the strength semantics: ω = 0 is still the base
model and keep = 1 is the unpruned artifact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from dso_cli.errors import DsoError
from dso_cli.steering.affine import module_names
from dso_cli.steering.artifact import Artifact


@dataclass(frozen=True)
class PruneStats:
    keep: float
    n_kept: int
    n_neurons: int
    mass_kept: float  # share of the total sum of |a| + |b| on the kept neurons
    modules_touched: int  # modules with at least one kept neuron

    def as_row(self) -> dict[str, float | int]:
        return {"keep": self.keep, "n_kept": self.n_kept, "n_neurons": self.n_neurons,
                "mass_kept": self.mass_kept, "modules_touched": self.modules_touched}  # fmt: skip


def is_affine(artifact: Artifact) -> bool:
    """True for the methods whose tensors are per-neuron ``a``, ``b`` applied as ``h + ω(a⊙h + b)``."""
    return artifact.method_class().affine


def neuron_weights(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """Module name -> ``|a| + |b|`` (float64, so the global ranking does not depend on rounding)."""
    return {name: tensors[f"{name}.a"].double().abs() + tensors[f"{name}.b"].double().abs()
            for name in module_names(tensors)}  # fmt: skip


def prune_affine(artifact: Artifact, keep: float) -> tuple[Artifact, PruneStats]:
    """A copy of ``artifact`` with all but the top ``keep`` fraction of neurons set to zero.

    ``round(keep · N)`` neurons are kept; ties at the threshold are broken by position (earlier modules
    and lower indices first), so the result is deterministic.
    """
    if not is_affine(artifact):
        raise DsoError(f"pruning needs an affine steering artifact (dso, mean_match), not {artifact.method!r}")
    if not (0.0 <= keep <= 1.0) or math.isnan(keep):
        raise DsoError(f"keep={keep} must be a fraction of neurons in [0, 1]")
    weights = neuron_weights(artifact.tensors)
    names = list(weights)
    flat = torch.cat([weights[n] for n in names])
    n_kept = round(keep * flat.numel())
    mask = torch.zeros(flat.numel(), dtype=torch.bool)
    mask[torch.sort(flat, descending=True, stable=True).indices[:n_kept]] = True
    tensors: dict[str, Tensor] = {}
    offset, touched = 0, 0
    for name in names:
        size = weights[name].numel()
        kept = mask[offset : offset + size]
        offset += size
        touched += int(kept.any())
        for part in ("a", "b"):
            key = f"{name}.{part}"
            tensors[key] = torch.where(kept, artifact.tensors[key], torch.zeros_like(artifact.tensors[key]))
    total = float(flat.sum())
    stats = PruneStats(keep, n_kept, flat.numel(), float(flat[mask].sum()) / total if total > 0 else 1.0, touched)
    manifest = {**artifact.manifest, "pruned": {**stats.as_row(), "rule": "global top-k of |a|+|b|"}}
    return Artifact(artifact.method, tensors, manifest), stats
