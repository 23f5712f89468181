"""``dso train``: fit the steering method on the train split and save the artifact in the run directory."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

from dso_cli.benchmarks import build_benchmark, split_items
from dso_cli.commands.common import load_from_config, markdown_table, seed_everything
from dso_cli.commands.extract import store_from_config
from dso_cli.errors import DsoError
from dso_cli.evaluation import evaluate_strengths
from dso_cli.leakage import RECORD, training_record
from dso_cli.models.loading import LoadedModel
from dso_cli.rl.checkpoint import CHECKPOINT, load_checkpoint
from dso_cli.rl.loggers import make_logger
from dso_cli.rl.rewards import Reward
from dso_cli.rl.trainer import TrainConfig
from dso_cli.runs import ARTIFACT_DIR, claim_run_dir, load_train_config, new_train_dir, save_provenance
from dso_cli.scoring import OptionScorer
from dso_cli.steering.artifact import MANIFEST, Artifact
from dso_cli.steering.dso import fit_dso
from dso_cli.steering.methods import CLOSED_FORM, fit_closed_form
from dso_cli.targets import instantiate_checked


def train_config(cfg: DictConfig) -> TrainConfig:
    opt = OmegaConf.to_container(cfg.optimizer, resolve=True)
    assert isinstance(opt, dict)
    for key in ("name", "kl_text_path"):  # not trainer settings
        opt.pop(key, None)
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


def run_train(cfg: DictConfig, job_num: int | None = None, overrides: Sequence[str] = ()) -> Path:
    auto = cfg.get("resume") == "auto"
    if auto:
        cfg = auto_resume(cfg)
        if finished(Path(cfg.run_dir)):
            print(f"dso train: {cfg.run_dir} already finished training; nothing to do", flush=True)
            return Path(cfg.run_dir)
    if cfg.get("resume") not in (True, False, None):
        raise DsoError(f"resume={cfg.resume}: choose true, false or auto")
    if cfg.get("resume"):
        cfg = resumed_config(cfg, overrides)
    method = cfg.steering_method.name
    if method != "dso" and method not in CLOSED_FORM:
        raise DsoError(f"steering_method={method} cannot be trained (choose from: dso, {', '.join(CLOSED_FORM)})")
    tcfg = train_config(cfg) if method == "dso" else None  # bad optimizer values fail before any file is made
    if cfg.run_dir:
        run_dir = Path(cfg.run_dir)
        if finished(run_dir) and not cfg.get("overwrite"):
            raise DsoError(f"{run_dir} already holds a trained artifact; pass a new run_dir (or overwrite=true)")
        starting_over = cfg.get("resume") is False and auto  # resume=auto without a checkpoint: a requeued job
        claim_run_dir(run_dir, resume=bool(cfg.get("resume")) or starting_over, overwrite=bool(cfg.get("overwrite")))
    else:
        run_dir = new_train_dir(cfg, job_num)
    cfg = cfg.copy()
    cfg.run_dir = str(run_dir)
    seed_everything(int(cfg.seed))
    splits = build_benchmark(cfg.bias_benchmark, cfg.model)
    train_items = split_items(splits, "train")
    if not any(item["ambiguous"] for item in train_items):
        raise DsoError(
            f"bias={cfg.bias_benchmark.name} has no ambiguous training items, so there is no bias to train away; "
            "evaluate transfer to it with `dso eval` instead"
        )
    reward = instantiate_checked(cfg.reward, "reward")
    text = kl_text(cfg) if tcfg is not None and tcfg.kl_text_passages > 0 else []
    val_text = kl_text(cfg, "val") if tcfg is not None and tcfg.eval_every > 0 else []
    loaded, scorer = load_from_config(cfg)
    if not cfg.get("resume"):
        extra = {"device": str(loaded.device), "dtype": str(loaded.dtype), "scoring": scorer.describe()}
        save_provenance(run_dir, cfg, extra=extra)
    print(f"dso train: run directory {run_dir}", flush=True)
    val_items = split_items(splits, "val") if "val" in splits else None
    if tcfg is None:
        options = OmegaConf.to_container(cfg.steering_method, resolve=True)
        store = store_from_config(cfg, scorer, train_items)
        artifact = fit_closed_form(method, loaded, store, options, norm_modules=norm_override(cfg), val_items=val_items)
        for line in store.cache_log:
            print(f"dso train: {line}", flush=True)
    else:
        artifact = _fit_dso(cfg, run_dir, loaded, scorer, train_items, reward, tcfg, val_items, text, val_text)
    artifact.manifest[RECORD] = training_record(train_items)  # later verbs refuse to evaluate on these
    artifact.save(run_dir / ARTIFACT_DIR)  # before the optional evaluation: an interruption loses no fit
    print(f"dso train: saved {run_dir / ARTIFACT_DIR}", flush=True)
    if cfg.train.eval_val and val_items:
        rows = evaluate_strengths(scorer, artifact, val_items, [0.0, 1.0], desc="val")
        artifact.manifest["train_metrics"]["val"] = {f"alpha={r['alpha']:g}": r for r in rows}
        print(markdown_table(rows, ["alpha", "pob", "pob_se", "stereotype_gap", "unamb_acc", "kl"]))
        artifact.save(run_dir / ARTIFACT_DIR)
    return run_dir


def auto_resume(cfg: DictConfig) -> DictConfig:
    """``resume=auto run_dir=D``: continue D when it holds a checkpoint, else start there; for jobs a
    cluster may requeue after a timeout or preemption, which rerun the same command line."""
    if not cfg.run_dir:
        raise DsoError("resume=auto needs a fixed run directory per job: run_dir=PATH")
    cfg = cfg.copy()
    cfg.resume = (Path(cfg.run_dir) / CHECKPOINT).is_file()
    return cfg


def finished(run_dir: Path) -> bool:
    """Training in ``run_dir`` is over: its artifact is saved."""
    return (run_dir / ARTIFACT_DIR / MANIFEST).exists()


def resumed_config(cfg: DictConfig, overrides: Sequence[str]) -> DictConfig:
    """``resume=true run_dir=D``: D's own config, with what this command line sets explicitly on top."""
    if not cfg.run_dir:
        raise DsoError("resume=true needs the run to continue: run_dir=PATH")
    run_dir = Path(cfg.run_dir)
    if not (run_dir / CHECKPOINT).is_file():
        raise DsoError(f"{run_dir} has no {CHECKPOINT} to resume from")
    if finished(run_dir):
        raise DsoError(f"{run_dir} already finished training (its artifact is saved)")
    load_checkpoint(run_dir / CHECKPOINT)  # refused (one line) before any work if it is not a plain-data snapshot
    resumed = load_train_config(run_dir)
    OmegaConf.set_struct(resumed, False)
    for override in overrides:
        key, sep, _ = override.lstrip("+~").partition("=")
        if sep and key not in ("resume", "run_dir"):
            OmegaConf.update(resumed, key, OmegaConf.select(cfg, key), force_add=True)
    resumed.resume = True
    resumed.run_dir = str(run_dir)
    return resumed


def kl_text(cfg: DictConfig, part: str = "train") -> list[str]:
    """Neutral-text passages for the training KL (``optimizer.kl_text_path``, default the Lee
    background articles; never the held-out articles that ``text_kl`` is measured on). ``part="val"``:
    the passages kept out of training for early stopping."""
    from dso_cli.benchmarks.neutral_text import read_passages

    return read_passages(cfg.optimizer.get("kl_text_path"), part, what="optimizer.kl_text_path")


def _fit_dso(
    cfg: DictConfig,
    run_dir: Path,
    loaded: LoadedModel,
    scorer: OptionScorer,
    train_items: list[dict],
    reward: Reward,
    tcfg: TrainConfig,
    val_items: list[dict] | None = None,
    text_passages: Sequence[str] = (),
    val_text_passages: Sequence[str] = (),
) -> Artifact:
    """The RL trainer, logging to the configured tracker and checkpointing into ``run_dir``."""
    resume = bool(cfg.get("resume"))
    checkpoint = run_dir / CHECKPOINT
    resume_step = int(load_checkpoint(checkpoint)["step"]) if resume else None
    logger = make_logger(cfg.logger, run_dir, OmegaConf.to_container(cfg, resolve=True), resume_step=resume_step)
    try:
        return fit_dso(
            loaded,
            scorer,
            train_items,
            reward,
            tcfg,
            norm_modules=norm_override(cfg),
            log=logger,
            extra_hyperparameters={"benchmark": cfg.bias_benchmark.name},
            val_items=val_items,
            text_passages=text_passages,
            val_text_passages=val_text_passages,
            checkpoint_path=checkpoint,
            resume=resume,
        )
    finally:
        logger.close()
