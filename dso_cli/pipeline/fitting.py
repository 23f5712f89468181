"""Fitting a steering method inside a run directory: the step ``dso train`` and ``dso compare`` share.

The verbs build a :class:`FitJob` (model, scorer, items) and ask the method to fit; a trained method
(``method.trained``) also gets the RL trainer's settings, its logger and its checkpoint in the run
directory from here, so neither verb knows which method it is fitting.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from dso_cli.errors import DsoError
from dso_cli.rl.checkpoint import CHECKPOINT, load_checkpoint
from dso_cli.rl.config import TrainConfig
from dso_cli.rl.loggers import make_logger
from dso_cli.steering.artifact import Artifact
from dso_cli.steering.method import FitJob, SteeringMethod, Training
from dso_cli.targets import instantiate_checked


def train_config(cfg: DictConfig) -> TrainConfig:
    """The RL trainer's settings from the ``optimizer`` section (and the seed)."""
    opt = OmegaConf.to_container(cfg.optimizer, resolve=True)
    assert isinstance(opt, dict)
    return trainer_settings(opt, int(cfg.seed), prefix="optimizer.")


def trainer_settings(optimizer: Mapping[str, Any], seed: int, prefix: str = "") -> TrainConfig:
    """A :class:`TrainConfig` from an optimizer mapping (``conf/optimizer/*.yaml`` keys; absent keys take
    :class:`~dso_cli.config.optimizer.OptimizerOptions`' defaults); ``prefix`` names a bad key as the
    user typed it."""
    opt = dict(optimizer)
    if "omega" in opt:  # a run recorded before optimizer.omega was named strength_mode
        opt.setdefault("strength_mode", opt.pop("omega"))
    unknown = sorted(set(opt) - set(TrainConfig.__dataclass_fields__))
    if unknown:
        raise DsoError(f"{prefix}{unknown[0]} is not an option of the DSO trainer")
    return TrainConfig(**{"seed": seed, **opt})


def kl_text(cfg: DictConfig, part: str = "train") -> list[str]:
    """Neutral-text passages for the training KL (``optimizer.kl_text_path``, default the Lee
    background articles; never the held-out articles that ``text_kl`` is measured on). ``part="val"``:
    the passages kept out of training for early stopping."""
    from dso_cli.benchmarks.neutral_text import read_passages

    return read_passages(cfg.optimizer.get("kl_text_path"), part, what="optimizer.kl_text_path")


def training_inputs(cfg: DictConfig) -> Training:
    """What a trained method reads from the config: the trainer's settings, the reward and the KL text
    (made before the model loads, so a bad value or a missing file fails in seconds)."""
    tcfg = train_config(cfg)
    return Training(
        config=tcfg,
        reward=instantiate_checked(cfg.reward, "reward"),
        text_passages=kl_text(cfg) if tcfg.kl_text_passages > 0 else (),
        val_text_passages=kl_text(cfg, "val") if tcfg.eval_every > 0 else (),
        extra_hyperparameters={"benchmark": cfg.bias_benchmark.name},
    )


@dataclass(frozen=True)
class Tracking:
    """Where a trained method's progress goes: the ``logger`` section, and the run's resolved config
    (the hyperparameters a tracker such as wandb records beside the curves)."""

    logger: Mapping[str, Any]
    config: Mapping[str, Any]

    @classmethod
    def from_config(cls, cfg: DictConfig) -> Tracking:
        logger = OmegaConf.to_container(cfg.logger, resolve=True)
        config = OmegaConf.to_container(cfg, resolve=True)
        assert isinstance(logger, dict) and isinstance(config, dict)
        return cls(logger=logger, config=config)


def fit_in_run(
    method: SteeringMethod,
    job: FitJob,
    run_dir: Path,
    *,
    training: Training | None = None,
    tracking: Tracking | None = None,
    resume: bool = False,
) -> Artifact:
    """``method`` fitted on ``job``; a trained one (``training``, from :func:`training_inputs`) logs to
    ``tracking``'s tracker and checkpoints into ``run_dir`` (``resume``: continue from it)."""
    if not method.trained:
        return method.fit(job)
    if training is None or tracking is None:
        raise ValueError(f"{method.name} is trained: fit_in_run needs its training inputs and tracking")
    checkpoint = run_dir / CHECKPOINT
    resume_step = int(load_checkpoint(checkpoint)["step"]) if resume else None
    logger = make_logger(tracking.logger, run_dir, tracking.config, resume_step=resume_step)
    try:
        job.training = replace(training, log=logger, checkpoint_path=checkpoint, resume=resume)
        return method.fit(job)
    finally:
        logger.close()
