"""Representation-level baselines aimed at the occupation–gender association itself, not at decisions.

Both read the residual stream where a sentence about an occupation is about to say a pronoun ("The
nurse said that"): the pronoun probes (:mod:`dso_cli.benchmarks.pronoun_probes`) of the training
occupations, at the last prompt token, labelled by the occupation's stereotyped gender.

* ``projection`` (in the spirit of DAMA, Limisiewicz et al. 2024): the difference of the two classes'
  mean activations is the occupation–gender direction; strength ``α`` removes ``α`` times the
  activation's component along it, ``h − α (h·u) u``, at the chosen layers' outputs, every token.
* ``leace_association``: LEACE (the ``concept-erasure`` package) fitted on the same activations and
  labels, so that no linear probe reads the stereotyped gender of the occupation after erasure; applied
  like :mod:`dso_cli.steering.leace`'s eraser.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from dso_cli.benchmarks.pronoun_probes import ASSOCIATION, association_probes
from dso_cli.config.group_schemas import AssociationOptions
from dso_cli.errors import DsoError
from dso_cli.models.layouts import layer_modules
from dso_cli.scoring import OptionScorer
from dso_cli.steering.activations import collect
from dso_cli.steering.affine import SteeringHandle
from dso_cli.steering.artifact import Artifact
from dso_cli.steering.hooks import hooks_on, output_tensor, with_hidden
from dso_cli.steering.leace import LEACE, fit_eraser
from dso_cli.steering.method import FitJob, SteeringMethod

PROJECTION_STRENGTH = {
    "semantics": "h - strength * (h . u) u at the chosen layers' outputs, u the occupation-gender direction",
    "range": [0.0, 1.0],
    "default_grid": "0:1:0.25",
}


def association_activations(
    scorer: OptionScorer, train_items: Sequence[Mapping[str, Any]], names: Sequence[str]
) -> tuple[dict[str, Tensor], Tensor]:
    """``({module: [n, hidden]}, z)``: the modules' outputs at the last token of the training occupations'
    pronoun probes, and ``z`` 1 where the occupation's majority is female."""
    probes = [p for p in association_probes(train_items) if p["question_type"] == ASSOCIATION]
    if not probes:
        raise DsoError("this method learns the association from the occupation benchmark's training occupations "
                       "(bias=occupation, bias.attribute=gender); the training split has none")  # fmt: skip
    z = torch.tensor([p["option_groups"][p["pro_option"]] == "female" for p in probes], dtype=torch.float32)
    if z.min() == z.max():
        raise DsoError("the training occupations lean one way only: no occupation-gender contrast to learn")
    recorded = collect(scorer, probes, [("output", n) for n in names], scorer.batch_size, "last_prompt")
    return {n: recorded.values["prompt"][("output", n)] for n in names}, z


def fit_on_association(
    job: FitJob, method: str, layers: Sequence[int] | None, strength: Mapping[str, Any],
    fit_module: Callable[[Tensor, Tensor], dict[str, Tensor]],
) -> Artifact:  # fmt: skip
    """An artifact of ``fit_module(activations, z)``'s tensors per chosen layer, fitted on the pronoun
    probes' activations (:func:`association_activations`); each tensor is stored as ``<module>.<part>``."""
    names = layer_modules(job.loaded.model, layers, method)
    acts, z = association_activations(job.scorer, job.train_items, names)
    tensors = {f"{name}.{part}": value for name in names for part, value in fit_module(acts[name], z).items()}
    return Artifact.create(
        method, tensors, model=job.loaded.describe(),
        hyperparameters={"layers": list(layers) if layers else None, "modules": names, "n_probes": len(z)},
        strength=strength,
    )  # fmt: skip


def projection_direction(x: Tensor, z: Tensor) -> dict[str, Tensor]:
    """``u``: the unit difference of the two classes' mean activations (the occupation-gender direction)."""
    direction = x[z == 1].mean(0) - x[z == 0].mean(0)
    return {"u": (direction / direction.norm().clamp_min(1e-12)).contiguous()}


@contextmanager
def apply_projection(
    model: nn.Module, tensors: Mapping[str, Tensor], strength: float = 1.0
) -> Iterator[SteeringHandle]:
    handle = SteeringHandle(strength)
    per_module = {key.rsplit(".", 1)[0]: value for key, value in tensors.items()}

    def make(u: Tensor):
        def hook(module: nn.Module, inputs: tuple, output: Any) -> Any:
            if handle.strength == 0.0:
                return None
            hidden = output_tensor(output)
            if hidden.shape[-1] != u.shape[-1]:
                raise DsoError(f"direction of size {u.shape[-1]} does not fit an output of {hidden.shape[-1]}")
            v = u.to(hidden.device, torch.float32)
            h32 = hidden.float()
            steered = h32 - handle.strength * (h32 @ v).unsqueeze(-1) * v
            return with_hidden(output, steered.to(hidden.dtype))

        return hook

    with hooks_on(model, per_module, make):
        yield handle


class Projection(SteeringMethod):
    """Removes the occupation–gender direction of pronoun contexts from decoder layers' outputs
    (option: ``layers``; default the middle one)."""

    name = "projection"
    options_class = AssociationOptions
    strength = PROJECTION_STRENGTH

    def fit(self, job: FitJob) -> Artifact:  # reads its own probes, so it records no decision completions
        return fit_on_association(job, self.name, self.options.layers, self.strength, projection_direction)

    @classmethod
    def apply(cls, model: nn.Module, tensors: Mapping[str, Tensor], strength: float):
        return apply_projection(model, tensors, strength)


class LEACEAssociation(LEACE):
    """LEACE fitted on the association (pronoun contexts labelled by the occupation's stereotyped
    gender) instead of on decision completions (option: ``layers``)."""

    name = "leace_association"
    options_class = AssociationOptions

    def records(self, model: nn.Module, norm_modules: Any, can_select: bool) -> tuple[list[str], list[str]]:
        return [], []  # reads its own probes, not the decision completions

    def fit(self, job: FitJob) -> Artifact:
        return fit_on_association(job, self.name, self.options.layers, self.strength, fit_eraser)
