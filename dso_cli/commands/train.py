"""``dso train``: fit the steering method on the train split and save the artifact in the run directory."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from dso_cli.benchmarks import build_benchmark, split_items
from dso_cli.errors import DsoError
from dso_cli.evaluation import Evaluator
from dso_cli.pipeline.fitting import Tracking, fit_in_run, training_inputs
from dso_cli.pipeline.inputs import activation_store
from dso_cli.pipeline.leakage import RECORD, training_record
from dso_cli.pipeline.results import markdown_table
from dso_cli.pipeline.runs import (
    ARTIFACT_DIR,
    claim_run_dir,
    load_train_config,
    new_train_dir,
    save_provenance,
    typed_keys,
)
from dso_cli.pipeline.setup import load_scored_model
from dso_cli.pipeline.specs import CacheSettings, ModelSetup
from dso_cli.rl.checkpoint import CHECKPOINT, load_checkpoint
from dso_cli.steering.artifact import MANIFEST
from dso_cli.steering.method import FitJob, make_method


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
    method = make_method(cfg.steering_method)
    cfg.steering_method.name = method.name  # steering_method._target_=pkg.Method: the run records its name
    # bad optimizer values, a missing reward target or KL text fail before any file is made
    training = training_inputs(cfg) if method.trained else None
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
    splits = build_benchmark(cfg.bias_benchmark, cfg.model)
    train_items = split_items(splits, "train")
    if not any(item["ambiguous"] for item in train_items):
        raise DsoError(
            f"bias={cfg.bias_benchmark.name} has no ambiguous training items, so there is no bias to train away; "
            "evaluate transfer to it with `dso eval` instead"
        )
    setup = ModelSetup.from_config(cfg)
    loaded, scorer = load_scored_model(setup)
    if not cfg.get("resume"):
        extra = {"device": str(loaded.device), "dtype": str(loaded.dtype), "scoring": scorer.describe()}
        save_provenance(run_dir, cfg, extra=extra)
    print(f"dso train: run directory {run_dir}", flush=True)
    val_items = split_items(splits, "val") if "val" in splits else None
    job = FitJob(loaded, scorer, train_items, val_items, norm_modules=setup.norm_modules)
    if not method.trained:
        job.store = activation_store(scorer, train_items, str(cfg.bias_benchmark.name), CacheSettings.from_config(cfg))
    tracking = Tracking.from_config(cfg) if method.trained else None
    artifact = fit_in_run(method, job, run_dir, training=training, tracking=tracking, resume=bool(cfg.get("resume")))
    for line in job.store.cache_log if job.store is not None else []:
        print(f"dso train: {line}", flush=True)
    artifact.manifest[RECORD] = training_record(train_items)  # later verbs refuse to evaluate on these
    artifact.save(run_dir / ARTIFACT_DIR)  # before the optional evaluation: an interruption loses no fit
    print(f"dso train: saved {run_dir / ARTIFACT_DIR}", flush=True)
    if cfg.train.eval_val and val_items:
        rows = Evaluator(scorer).evaluate(artifact, val_items, [0.0, 1.0], desc="val")
        artifact.manifest["train_metrics"]["val"] = {f"alpha={r['alpha']:g}": r for r in rows}
        print(
            markdown_table(
                rows, ["alpha", "pob", "pob_se", "item_bias", "first_option_rate", "order_dep", "unamb_acc", "kl"]
            )
        )
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
    for key in typed_keys(overrides):
        if key not in ("resume", "run_dir"):
            OmegaConf.update(resumed, key, OmegaConf.select(cfg, key), force_add=True)
    resumed.resume = True
    resumed.run_dir = str(run_dir)
    return resumed
