"""Fitting a steering method inside a run directory: the step ``dso train`` and ``dso compare`` share.

The verbs build a :class:`FitJob` (model, scorer, items) and ask the method to fit; a trained method
(``method.trained``) also gets the RL trainer's settings, its logger and its checkpoint in the run
directory from here, so neither verb knows which method it is fitting.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

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
    for key in ("name", "kl_text_path"):  # not trainer settings
        opt.pop(key, None)
    if "omega" in opt:  # a run recorded before optimizer.omega was named strength_mode
        opt.setdefault("strength_mode", opt.pop("omega"))
    opt["betas"] = tuple(opt.get("betas", (0.9, 0.999)))
    known = set(TrainConfig.__dataclass_fields__)
    unknown = sorted(set(opt) - known)
    if unknown:
        raise DsoError(f"optimizer.{unknown[0]} is not an option of the DSO trainer")
    return TrainConfig(**opt, seed=int(cfg.seed))


def norm_override(cfg: DictConfig) -> str | list[str] | None:
    """``model.norm_modules``: None, one regex, or a list of module names."""
    value = cfg.model.get("norm_modules")
    return list(value) if isinstance(value, ListConfig) else value


def kl_text(cfg: DictConfig, part: str = "train") -> list[str]:
    """Neutral-text passages for the training KL (``optimizer.kl_text_path``, default the Lee
    background articles; never the held-out articles that ``text_kl`` is measured on). ``part="val"``:
    the passages kept out of training for early stopping."""
    from dso_cli.benchmarks.neutral_text import read_passages

    return read_passages(cfg.optimizer.get("kl_text_path"), part, what="optimizer.kl_text_path")


def fit_in_run(method: SteeringMethod, job: FitJob, cfg: DictConfig, run_dir: Path, resume: bool = False) -> Artifact:
    """``method`` fitted on ``job``; a trained one logs to the configured tracker and checkpoints into
    ``run_dir`` (``resume``: continue from its checkpoint)."""
    if not method.trained:
        return method.fit(job)
    tcfg = train_config(cfg)
    checkpoint = run_dir / CHECKPOINT
    resume_step = int(load_checkpoint(checkpoint)["step"]) if resume else None
    logger = make_logger(cfg.logger, run_dir, OmegaConf.to_container(cfg, resolve=True), resume_step=resume_step)
    try:
        job.training = Training(
            config=tcfg,
            reward=instantiate_checked(cfg.reward, "reward"),
            log=logger,
            text_passages=kl_text(cfg) if tcfg.kl_text_passages > 0 else (),
            val_text_passages=kl_text(cfg, "val") if tcfg.eval_every > 0 else (),
            checkpoint_path=checkpoint,
            resume=resume,
            extra_hyperparameters={"benchmark": cfg.bias_benchmark.name},
        )
        return method.fit(job)
    finally:
        logger.close()
