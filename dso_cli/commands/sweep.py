"""``dso sweep``: evaluate a run's artifact at every strength of a grid; writes ``sweep.csv``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from dso_cli.benchmarks import build_benchmark, split_items
from dso_cli.commands.common import load_from_config, markdown_table, merge_into_csv, seed_everything
from dso_cli.errors import DsoError
from dso_cli.evaluation import evaluate_strengths
from dso_cli.runs import (
    ARTIFACT_DIR,
    find_latest_train_run,
    load_train_config,
    merge_run_config,
    parse_alpha,
    save_provenance,
)
from dso_cli.scoring import OptionScorer
from dso_cli.steering.artifact import Artifact

RUN_SECTIONS = ("model", "bias_benchmark", "scoring", "steering_method")
SWEEP_COLUMNS = [
    "method", "alpha", "benchmark", "split", "pob", "pob_se", "pob_hard", "stereotype_gap",
    "stereotype_gap_hard", "unamb_acc", "unamb_acc_hard", "refusal_rate", "kl", "n_ambiguous", "n_unambiguous",
]  # fmt: skip
TABLE_COLUMNS = ["split", "alpha", "pob", "pob_se", "stereotype_gap", "unamb_acc", "unamb_acc_hard", "kl"]


def resolve_run_dir(cfg: DictConfig) -> Path:
    if cfg.run_dir:
        run_dir = Path(cfg.run_dir)
        if not run_dir.is_dir():
            raise DsoError(f"run_dir {run_dir} does not exist")
        return run_dir
    return find_latest_train_run(cfg.outputs_root, cfg.model.name_or_path, cfg.bias_benchmark.name)


def run_config(cfg: DictConfig, overrides: Sequence[str]) -> tuple[Path, DictConfig]:
    """The run directory and this verb's config with the run's model/benchmark/scoring sections."""
    run_dir = resolve_run_dir(cfg)
    train_cfg = load_train_config(run_dir)
    chosen = [o.partition("=")[2] for o in overrides if o.startswith("model=")]
    if chosen and chosen[-1] != train_cfg.model.name:
        raise DsoError(f"run {run_dir} was trained on model={train_cfg.model.name}, not model={chosen[-1]}")
    merged = merge_run_config(train_cfg, cfg, overrides, RUN_SECTIONS)
    merged.run_dir = str(run_dir)
    return run_dir, merged


def load_run_artifact(
    cfg: DictConfig, overrides: Sequence[str], verb: str
) -> tuple[Path, DictConfig, OptionScorer, Artifact]:
    """A verb that evaluates a trained run: its directory, merged config, scorer and checked artifact.

    The verb's resolved config and environment are saved into the run as ``<verb>_config.yaml``.
    """
    run_dir, cfg = run_config(cfg, overrides)
    artifact_dir = run_dir / ARTIFACT_DIR
    if not (artifact_dir / "manifest.json").is_file():
        raise DsoError(f"run_dir {run_dir} has no trained artifact ({artifact_dir}); run `dso train` first")
    save_provenance(run_dir, cfg, prefix=f"{verb}_")
    seed_everything(int(cfg.seed))
    loaded, scorer = load_from_config(cfg)
    return run_dir, cfg, scorer, Artifact.load(artifact_dir, loaded.describe())


def run_sweep(cfg: DictConfig, overrides: Sequence[str] = ()) -> Path:
    alphas = parse_alpha(cfg.alpha)
    run_dir, cfg, scorer, artifact = load_run_artifact(cfg, overrides, "sweep")
    if not any(o.lstrip("+").startswith("alpha=") for o in overrides):  # the method's own default grid
        alphas = parse_alpha(artifact.manifest.get("strength", {}).get("default_grid", cfg.alpha))
    splits = build_benchmark(cfg.bias_benchmark, cfg.model)
    print(f"dso sweep: {artifact.method} from {run_dir}, strengths {alphas}", flush=True)

    rows: list[dict] = []
    sweep_csv = run_dir / "sweep.csv"
    earlier = pd.read_csv(sweep_csv) if sweep_csv.is_file() else pd.DataFrame(columns=SWEEP_COLUMNS)

    def record(split: str, row: dict) -> None:
        """Rewrite sweep.csv with this row added; rows of other splits or strengths are kept."""
        rows.append({"method": artifact.method, "benchmark": cfg.bias_benchmark.name, "split": split, **row})
        merge_into_csv(sweep_csv, earlier, pd.DataFrame(rows)[SWEEP_COLUMNS], ["method", "split", "alpha"], sort=True)

    for split in cfg.sweep.splits:
        evaluate_strengths(
            scorer,
            artifact,
            split_items(splits, split),
            alphas,
            bootstrap_reps=int(cfg.sweep.bootstrap_reps),
            seed=int(cfg.seed),
            on_row=lambda row, split=split: record(split, row),
            desc=f"sweep {split}",
        )
    print(markdown_table(rows, TABLE_COLUMNS))
    print(f"dso sweep: wrote {run_dir / 'sweep.csv'}", flush=True)
    return run_dir
