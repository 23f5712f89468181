"""DSO as a steering method: fit the affine norm transform with the RL trainer, return an artifact."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from dso_cli.models.layouts import find_norm_modules
from dso_cli.models.loading import LoadedModel
from dso_cli.rl.rewards import Reward
from dso_cli.rl.trainer import TrainConfig, train_dso
from dso_cli.scoring import OptionScorer
from dso_cli.steering.affine import init_affine_params
from dso_cli.steering.artifact import Artifact

STRENGTH = {
    "semantics": "h + w * (a * h + b) on every hooked norm output; 0 = base model, 1 = trained strength",
    "trained_at": 1.0,
    "range": [0.0, 1.0],
    "default_grid": "0:1:0.25",
}


def fit_dso(
    loaded: LoadedModel,
    scorer: OptionScorer,
    items: Sequence[Mapping[str, Any]],
    reward: Reward,
    cfg: TrainConfig,
    *,
    norm_modules: Any = None,
    log: Callable[[dict[str, float]], None] = lambda row: None,
    extra_hyperparameters: Mapping[str, Any] | None = None,
    val_items: Sequence[Mapping[str, Any]] | None = None,
    text_passages: Sequence[str] = (),
    val_text_passages: Sequence[str] = (),
    checkpoint_path: Path | None = None,
    resume: bool = False,
) -> Artifact:
    """Train ``a``, ``b`` on every backbone norm of ``loaded`` and package them as an artifact."""
    modules = find_norm_modules(loaded.model, norm_modules)
    params = init_affine_params(modules, device=loaded.device)
    metrics = train_dso(
        scorer,
        params,
        items,
        reward,
        cfg,
        log=log,
        val_items=val_items,
        text_passages=text_passages,
        val_text_passages=val_text_passages,
        checkpoint_path=checkpoint_path,
        resume=resume,
    )
    return Artifact.create(
        "dso",
        params,
        model=loaded.describe(),
        hyperparameters={**asdict(cfg), "reward": type(reward).__name__, **(extra_hyperparameters or {})},
        strength=STRENGTH,
        train_metrics=metrics,
    )
