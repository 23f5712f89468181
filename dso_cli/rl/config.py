"""The RL trainer's settings: the ``optimizer`` options (:class:`dso_cli.config.optimizer.OptimizerOptions`,
one definition of every key, its default and its range) plus the run's seed and the estimator check."""

from __future__ import annotations

from dataclasses import dataclass

from dso_cli.config.fields import setting
from dso_cli.config.optimizer import OptimizerOptions
from dso_cli.errors import DsoError


@dataclass
class TrainConfig(OptimizerOptions):
    seed: int = setting(0, "seed of the batch sampler, the estimator's draws and the KL passages")

    def __post_init__(self) -> None:
        super().__post_init__()
        from dso_cli.rl.estimators import ESTIMATORS

        if self.estimator not in ESTIMATORS:
            raise DsoError(f"optimizer.estimator must be one of {', '.join(ESTIMATORS)}, not {self.estimator!r}")
