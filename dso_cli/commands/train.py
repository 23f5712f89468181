"""``dso train``: fit the steering method on the train split and save the artifact in the run directory."""

from __future__ import annotations

from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from dso_cli.benchmarks import build_benchmark, split_items
from dso_cli.commands.common import load_from_config, markdown_table, seed_everything
from dso_cli.errors import DsoError
from dso_cli.evaluation import evaluate_strengths
from dso_cli.models.loading import LoadedModel
from dso_cli.rl.loggers import make_logger
from dso_cli.rl.rewards import Reward
from dso_cli.rl.trainer import TrainConfig
from dso_cli.runs import ARTIFACT_DIR, new_train_dir, save_provenance
from dso_cli.scoring import OptionScorer
from dso_cli.steering.activations import ActivationStore
from dso_cli.steering.artifact import MANIFEST, Artifact
from dso_cli.steering.dso import fit_dso
from dso_cli.steering.methods import CLOSED_FORM, fit_closed_form

SUPPORTED_ESTIMATORS = ("exact",)


def train_config(cfg: DictConfig) -> TrainConfig:
    opt = OmegaConf.to_container(cfg.optimizer, resolve=True)
    assert isinstance(opt, dict)
    estimator = opt.pop("estimator", "exact")
    if estimator not in SUPPORTED_ESTIMATORS:
        raise DsoError(
            f"optimizer.estimator={estimator!r} is not available (choose from {', '.join(SUPPORTED_ESTIMATORS)})"
        )
    opt.pop("name", None)
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


def run_train(cfg: DictConfig, job_num: int | None = None) -> Path:
    method = cfg.steering_method.name
    if method != "dso" and method not in CLOSED_FORM:
        raise DsoError(f"steering_method={method} cannot be trained (choose from: dso, {', '.join(CLOSED_FORM)})")
    run_dir = Path(cfg.run_dir) if cfg.run_dir else new_train_dir(cfg, job_num)
    if (run_dir / ARTIFACT_DIR / MANIFEST).exists():
        raise DsoError(f"{run_dir} already holds a trained artifact; pass a new run_dir")
    cfg = cfg.copy()
    cfg.run_dir = str(run_dir)
    tcfg = train_config(cfg) if method == "dso" else None
    seed_everything(int(cfg.seed))
    splits = build_benchmark(cfg.bias_benchmark)
    train_items = split_items(splits, "train")
    if not any(item["ambiguous"] for item in train_items):
        raise DsoError(
            f"bias={cfg.bias_benchmark.name} has no ambiguous training items, so there is no bias to train away; "
            "evaluate transfer to it with `dso eval` instead"
        )
    reward = instantiate(cfg.reward)
    loaded, scorer = load_from_config(cfg)
    save_provenance(run_dir, cfg, extra={"device": str(loaded.device), "dtype": str(loaded.dtype)})
    print(f"dso train: run directory {run_dir}", flush=True)
    if tcfg is None:
        options = OmegaConf.to_container(cfg.steering_method, resolve=True)
        val_items = split_items(splits, "val") if "val" in splits else None
        store = ActivationStore(scorer, train_items)
        artifact = fit_closed_form(method, loaded, store, options, norm_modules=norm_override(cfg), val_items=val_items)
    else:
        artifact = _fit_dso(cfg, run_dir, loaded, scorer, train_items, reward, tcfg)
    if cfg.train.eval_val and "val" in splits:
        rows = evaluate_strengths(scorer, artifact, split_items(splits, "val"), [0.0, 1.0], desc="val")
        artifact.manifest["train_metrics"]["val"] = {f"alpha={r['alpha']:g}": r for r in rows}
        print(markdown_table(rows, ["alpha", "pob", "pob_se", "stereotype_gap", "unamb_acc", "kl"]))
    artifact.save(run_dir / ARTIFACT_DIR)
    print(f"dso train: saved {run_dir / ARTIFACT_DIR}", flush=True)
    return run_dir


def _fit_dso(
    cfg: DictConfig,
    run_dir: Path,
    loaded: LoadedModel,
    scorer: OptionScorer,
    train_items: list[dict],
    reward: Reward,
    tcfg: TrainConfig,
) -> Artifact:
    """The RL trainer, logging to the configured tracker."""
    logger = make_logger(cfg.logger, run_dir, OmegaConf.to_container(cfg, resolve=True))
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
        )
    finally:
        logger.close()
