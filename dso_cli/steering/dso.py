"""DSO as a steering method: fit the affine norm transform with the RL trainer, return an artifact."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from dso_cli.config.group_schemas import DSOOptions
from dso_cli.errors import DsoError
from dso_cli.models.layouts import find_norm_modules, within_depth
from dso_cli.models.loading import LoadedModel
from dso_cli.rl.config import TrainConfig
from dso_cli.rl.rewards import Reward
from dso_cli.rl.trainer import train_dso
from dso_cli.scoring import OptionScorer
from dso_cli.steering.affine import AffineMethod, apply_affine, init_affine_params
from dso_cli.steering.artifact import Artifact
from dso_cli.steering.method import FitJob

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
    depth: Sequence[float] = (0.0, 1.0),
    log: Callable[[dict[str, float]], None] = lambda row: None,
    extra_hyperparameters: Mapping[str, Any] | None = None,
    val_items: Sequence[Mapping[str, Any]] | None = None,
    text_passages: Sequence[str] = (),
    val_text_passages: Sequence[str] = (),
    checkpoint_path: Path | None = None,
    resume: bool = False,
    stock_export: bool = False,
) -> Artifact:
    """Train ``a``, ``b`` on the backbone norms of ``loaded`` (``norm_modules`` where given, else the
    family's norms within ``depth``, see :func:`~dso_cli.models.layouts.within_depth`) and package them
    as an artifact; with ``stock_export``, ``b`` stays 0 on the norms whose shift a stock checkpoint
    cannot hold."""
    modules = find_norm_modules(loaded.model, norm_modules)
    if not norm_modules:
        modules = within_depth(loaded.model, modules, depth)
    params = init_affine_params(modules, device=loaded.device)
    frozen = stock_only_scales(loaded.model, modules) if stock_export else []
    for name in frozen:
        params[f"{name}.b"].requires_grad_(False)
    metrics = train_dso(
        apply_affine,
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
        hyperparameters={
            **asdict(cfg),
            "reward": type(reward).__name__,
            "stock_export": stock_export,
            "depth": None if norm_modules else [float(x) for x in depth],
            "shift_frozen": frozen,
            **(extra_hyperparameters or {}),
        },
        strength=STRENGTH,
        train_metrics=metrics,
    )


def stock_only_scales(model, modules: Mapping[str, int]) -> list[str]:
    """The norms whose shift ``b`` no stock checkpoint of this architecture can hold (see
    :mod:`dso_cli.steering.export_stock`): ``stock_export`` trains only their scale ``a``."""
    from dso_cli.steering.export_stock import plan_shifts

    return plan_shifts(model, modules).unplaced


class DSO(AffineMethod):
    """Direct Steering Optimization: ``a``, ``b`` on every backbone norm trained by policy gradient
    (the RL trainer's settings come in :attr:`FitJob.training`)."""

    name = "dso"
    options_class = DSOOptions
    strength = STRENGTH
    trained = True

    def fit(self, job: FitJob) -> Artifact:
        if job.training is None:
            raise DsoError("dso is trained by RL: its fit needs the trainer's settings (FitJob.training)")
        run = job.training
        return fit_dso(
            job.loaded,
            job.scorer,
            job.train_items,
            run.reward,
            run.config,
            norm_modules=job.norm_modules,
            depth=self.options.depth,
            log=run.log,
            extra_hyperparameters=run.extra_hyperparameters,
            val_items=job.val_items,
            text_passages=run.text_passages,
            val_text_passages=run.val_text_passages,
            checkpoint_path=run.checkpoint_path,
            resume=run.resume,
            stock_export=self.options.stock_export,
        )
