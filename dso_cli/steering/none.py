"""The ``none`` method: the base model as an artifact, so it sits on the same tables as the others."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from torch import Tensor, nn

from dso_cli.config.group_schemas import NoOptions
from dso_cli.models.loading import LoadedModel
from dso_cli.steering.affine import SteeringHandle
from dso_cli.steering.artifact import Artifact
from dso_cli.steering.method import FitJob, SteeringMethod

STRENGTH = {"semantics": "no steering at any strength", "range": [0.0, 0.0], "default_grid": "0"}


def fit_none(loaded: LoadedModel) -> Artifact:
    return Artifact.create("none", {}, model=loaded.describe(), hyperparameters={}, strength=STRENGTH)


@contextmanager
def apply_nothing(model: nn.Module, tensors: Mapping[str, Tensor], strength: float = 1.0) -> Iterator[SteeringHandle]:
    yield SteeringHandle(min(strength, 1.0))


class NoSteering(SteeringMethod):
    """The base model, fitted and applied like every other method (a row on every table)."""

    name = "none"
    options_class = NoOptions
    strength = STRENGTH

    def fit(self, job: FitJob) -> Artifact:
        return fit_none(job.loaded)

    @classmethod
    def apply(cls, model: nn.Module, tensors: Mapping[str, Tensor], strength: float):
        return apply_nothing(model, tensors, strength)
