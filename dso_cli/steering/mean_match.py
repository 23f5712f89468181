"""Mean matching (Linear-AcT style): DSO's affine family on the same norms, fitted in closed form.

For every hooked norm and neuron, the affine map that sends the pro-stereotypical completions'
activation mean and standard deviation onto the anti-stereotypical ones':
``h' = (σ_anti/σ_pro)(h − μ_pro) + μ_anti = h + (a ⊙ h + b)`` with ``a = σ_anti/σ_pro − 1`` and
``b = μ_anti − (σ_anti/σ_pro) μ_pro``. Same artifact format and hook as DSO, so the comparison
isolates what reinforcement learning adds.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from dso_cli.config.group_schemas import NoOptions
from dso_cli.errors import DsoError
from dso_cli.models.layouts import find_norm_modules
from dso_cli.models.loading import LoadedModel
from dso_cli.steering.activations import ActivationStore
from dso_cli.steering.affine import AffineMethod
from dso_cli.steering.artifact import Artifact
from dso_cli.steering.method import FitJob

STRENGTH = {
    "semantics": "h + w * (a * h + b) with (a, b) mapping pro-completion mean/std onto anti; 0 = base, 1 = matched",
    "range": [0.0, 1.0],
    "default_grid": "0:1:0.25",
}


def match_moments(pro: Tensor, anti: Tensor, eps: float = 1e-6) -> tuple[Tensor, Tensor]:
    """Per-neuron ``(a, b)`` with ``(1 + a) ⊙ pro + b`` having the mean and std of ``anti``."""
    scale = anti.std(0, unbiased=False) / pro.std(0, unbiased=False).clamp(min=eps)
    return scale - 1.0, anti.mean(0) - scale * pro.mean(0)


def fit_mean_match(loaded: LoadedModel, store: ActivationStore, norm_modules: Any = None) -> Artifact:
    names = list(find_norm_modules(loaded.model, norm_modules))
    acts = store.outputs(names)
    if len(acts["pro"][names[0]]) < 2:
        raise DsoError("mean_match needs at least two ambiguous training items with pro and anti options")
    tensors = {}
    for name in names:
        a, b = match_moments(acts["pro"][name], acts["anti"][name])
        tensors[f"{name}.a"], tensors[f"{name}.b"] = a, b
    return Artifact.create(
        "mean_match",
        tensors,
        model=loaded.describe(),
        hyperparameters={"n_items": len(acts["pro"][names[0]])},
        strength=STRENGTH,
    )


class MeanMatch(AffineMethod):
    """DSO's affine family fitted in closed form: pro-completion moments mapped onto anti's."""

    name = "mean_match"
    options_class = NoOptions
    strength = STRENGTH

    def records(self, model: nn.Module, norm_modules: Any, can_select: bool) -> tuple[list[str], list[str]]:
        return list(find_norm_modules(model, norm_modules)), []

    def fit(self, job: FitJob) -> Artifact:
        return fit_mean_match(job.loaded, job.activations(), norm_modules=job.norm_modules)
