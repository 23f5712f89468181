"""dso: controllable bias mitigation for language models by Direct Steering Optimization.

The library API (:mod:`dso_cli.api`): ``load_benchmark``, ``fit``, ``load_artifact``, ``evaluate``,
and ``artifact.apply(model, strength)``; imported on first use, so ``import dso_cli`` stays light.
"""

from __future__ import annotations

from typing import Any

from dso_cli.version import __version__ as __version__

__all__ = [
    "Artifact", "Metric", "Scores", "ScoringOptions", "SteeringMethod", "evaluate", "fit", "load_artifact",
    "load_benchmark",
]  # fmt: skip


def __getattr__(name: str) -> Any:
    if name in ("load_benchmark", "fit", "load_artifact", "evaluate"):
        from dso_cli import api

        return getattr(api, name)
    if name == "SteeringMethod":
        from dso_cli.steering.method import SteeringMethod

        return SteeringMethod
    if name == "ScoringOptions":
        from dso_cli.scoring.options import ScoringOptions

        return ScoringOptions
    if name in ("Metric", "Scores"):
        from dso_cli.evaluation import metric

        return getattr(metric, name)
    if name == "Artifact":
        from dso_cli.steering.artifact import Artifact

        return Artifact
    raise AttributeError(f"module 'dso_cli' has no attribute {name!r}")
