"""``dso prune``: keep only the strongest neurons of a trained affine artifact and re-evaluate it.

For every fraction in ``keep`` the artifact is pruned (see :mod:`dso_cli.steering.prune`) and
evaluated at one strength on held-out splits; rows go to ``<run_dir>/prune.csv`` (one per split and
fraction, plus ``keep = 0``, which is the base model) and each pruned artifact is saved under
``<run_dir>/pruned/keep_<k>/`` so it can be applied like any other.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig
from tqdm.auto import tqdm

from dso_cli.benchmarks import split_items
from dso_cli.errors import DsoError
from dso_cli.evaluation import DECISION_COLUMNS, Evaluator
from dso_cli.pipeline.results import RowWriter, markdown_table
from dso_cli.pipeline.runs import parse_strengths, save_provenance
from dso_cli.pipeline.specs import ModelSetup
from dso_cli.pipeline.trained_run import open_trained_run, run_config
from dso_cli.steering.prune import PruneStats, is_affine, prune_affine

PRUNE_COLUMNS = [
    "method", "keep", "n_kept", "n_neurons", "mass_kept", "modules_touched", "alpha", "benchmark", "split",
    *DECISION_COLUMNS,
]  # fmt: skip
TABLE_COLUMNS = [
    "split", "keep", "n_kept", "mass_kept", "pob", "pob_se", "item_bias", "first_option_rate", "order_dep",
    "unamb_acc", "kl",
]  # fmt: skip
PRUNED_DIR = "pruned"


def parse_keep(value: object) -> list[float]:
    """``keep=0.6``, ``keep=0.1:1:0.1`` or ``keep=[0.2,0.5]``: fractions in (0, 1]."""
    grid = parse_strengths(value, "keep")
    if grid[0] <= 0.0 or grid[-1] > 1.0:
        raise DsoError(f"keep={value}: fractions of neurons must lie in (0, 1]")
    return grid


def run_prune(cfg: DictConfig, overrides: Sequence[str] = ()) -> Path:
    keeps = parse_keep(cfg.keep)
    run_dir, cfg = run_config(cfg, overrides)
    run = open_trained_run(run_dir, ModelSetup.from_config(cfg), cfg.bias_benchmark, verb="prune",
                           evaluated=cfg.prune.splits, overrides=overrides)  # fmt: skip
    scorer, artifact = run.scorer, run.artifact
    if not is_affine(artifact):
        raise DsoError(f"run {run_dir} holds a {artifact.method} artifact; dso prune needs dso or mean_match")
    trained_at = float(artifact.manifest["strength"].get("trained_at", 1))
    strength = float(cfg.alpha) if cfg.alpha is not None else trained_at
    pruned = [prune_affine(artifact, keep) for keep in keeps]
    if cfg.prune.save_artifacts:
        for candidate, stats in pruned:
            candidate.save(run_dir / PRUNED_DIR / f"keep_{stats.keep:g}")
    print(f"dso prune: {artifact.method} from {run_dir} at strength {strength:g}, keep {keeps}", flush=True)

    prune_csv = run_dir / "prune.csv"
    rows = RowWriter(prune_csv, PRUNE_COLUMNS, ["split", "alpha", "keep"], sort=True,
                     on_first=lambda: save_provenance(run_dir, cfg, prefix="prune_"))  # fmt: skip

    def record(split: str, stats: PruneStats, row: dict) -> None:
        rows.add({"method": artifact.method, "benchmark": cfg.bias_benchmark.name, "split": split,
                  **stats.as_row(), **row, "alpha": strength})  # fmt: skip

    evaluator = Evaluator(scorer, bootstrap_reps=int(cfg.prune.bootstrap_reps), seed=int(cfg.seed))
    for split in cfg.prune.splits:
        items = split_items(run.splits, split)
        base = evaluator.base_policy(items, f"prune {split}")
        unpruned = PruneStats(0.0, 0, pruned[0][1].n_neurons, 0.0, 0)
        (row,) = evaluator.evaluate(None, items, [0.0], base=base)
        record(split, unpruned, row)
        for candidate, stats in tqdm(pruned, desc=f"prune {split}", unit="fraction"):
            (row,) = evaluator.evaluate(candidate, items, [strength], base=base, desc=f"keep={stats.keep:g}")
            record(split, stats, row)
    print(markdown_table(rows.rows, TABLE_COLUMNS))
    print(f"dso prune: wrote {prune_csv}", flush=True)
    return run_dir
