"""``dso sweep``: evaluate a run's artifact at every strength of a grid; writes ``sweep.csv``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from dso_cli.benchmarks import split_items
from dso_cli.evaluation import Evaluator, Scores, default_metrics, load_metrics
from dso_cli.metrics import mean_se
from dso_cli.pipeline.inputs import heldout_corpus
from dso_cli.pipeline.results import (
    FORMAT_COLUMNS,
    GROUP_COLUMNS,
    GROUP_KEY,
    RowWriter,
    by_member,
    format_rows,
    group_rows,
    markdown_table,
    result_columns,
)
from dso_cli.pipeline.runs import is_run_dir, parse_strengths, runs_under, save_provenance
from dso_cli.pipeline.specs import HeldoutText, ModelSetup
from dso_cli.pipeline.trained_run import open_trained_run, run_config

TYPE_COLUMNS = [
    "method", "benchmark", "attribute", "split", "alpha", "question_type", "unamb_acc", "unamb_acc_se", "n_unambiguous",
]  # fmt: skip
TABLE_COLUMNS = [
    "benchmark", "attribute", "split", "alpha", "pob", "pob_se", "item_bias", "first_option_rate", "order_dep",
    "unamb_acc", "assoc_gap", "assoc_r", "pronoun_control_acc", "text_kl", "text_ppl", "prompt_kl",
]  # fmt: skip


def run_sweep(cfg: DictConfig, overrides: Sequence[str] = ()) -> Path:
    """Sweep one run, or each run of a folder of runs (``run_dir=<multirun folder>``) in turn."""
    if cfg.get("run_dir") and Path(cfg.run_dir).is_dir() and not is_run_dir(Path(cfg.run_dir)):
        folder = Path(cfg.run_dir)
        for run in runs_under(folder):
            one = cfg.copy()
            one.run_dir = str(run)
            run_sweep(one, overrides)
        return folder
    strengths = parse_strengths(cfg.alpha)
    run_dir, cfg = run_config(cfg, overrides)
    metrics = default_metrics(extra=load_metrics(cfg.sweep.extra_metrics, "sweep.extra_metrics"))
    text = HeldoutText.from_config(cfg)
    corpus = heldout_corpus(text)  # a clash with the training text is refused before the model loads
    run = open_trained_run(run_dir, ModelSetup.from_config(cfg), cfg.bias_benchmark, verb="sweep",
                           evaluated=cfg.sweep.splits, overrides=overrides)  # fmt: skip
    scorer, artifact = run.scorer, run.artifact
    if not any(o.lstrip("+").startswith("alpha=") for o in overrides):  # the method's own default grid
        strengths = parse_strengths(artifact.manifest.get("strength", {}).get("default_grid", cfg.alpha))
    print(f"dso sweep: {artifact.method} from {run_dir}, strengths {strengths}", flush=True)

    key = ["method", "benchmark", "attribute", "split", "alpha"]
    rows = RowWriter(run_dir / "sweep.csv", result_columns(metrics), key, sort=True,
                     on_first=lambda: save_provenance(run_dir, cfg, prefix="sweep_"))  # fmt: skip
    type_rows = RowWriter(run_dir / "sweep_types.csv", TYPE_COLUMNS, [*key, "question_type"], sort=True)
    groups = RowWriter(run_dir / "sweep_groups.csv", GROUP_COLUMNS, GROUP_KEY, sort=True)
    formats = RowWriter(run_dir / "sweep_formats.csv", FORMAT_COLUMNS, [*key, "answer_format"], sort=True)

    def record(row: dict, scores: Scores, split: str, member: tuple[str, str]) -> None:
        head = {"method": artifact.method, "benchmark": member[0], "attribute": member[1], "split": split}
        rows.add(head | row)
        for qtype in accuracy_by_type(scores.items, scores.probs):
            type_rows.add(head | {"alpha": row["alpha"], **qtype})
        for rate in group_rows(head | {"alpha": row["alpha"]}, scores):
            groups.add(rate)
        for family in format_rows(head | {"alpha": row["alpha"]}, scores):
            formats.add(family)

    evaluator = Evaluator(scorer, metrics, bootstrap_reps=int(cfg.sweep.bootstrap_reps), seed=int(cfg.seed),
                          prompt_items=text.prompt_items, text_batch_size=text.batch_size)  # fmt: skip
    text_scores = evaluator.text_scores(artifact, corpus, strengths, desc="sweep")
    for split in cfg.sweep.splits:
        members = by_member(split_items(run.splits, split))
        for member, items in members.items():
            desc = f"sweep {split}" + (f" {' '.join(member)}" if len(members) > 1 else "")
            evaluator.evaluate(
                artifact, items, strengths, text=text_scores, desc=desc,
                on_row=lambda row, scores, s=split, m=member: record(row, scores, s, m),
            )  # fmt: skip
    print(markdown_table(rows.rows, TABLE_COLUMNS))
    if type_rows:
        print(type_table(type_rows.rows))
    written = ", ".join(w.path.name for w in (type_rows, groups, formats) if w)
    print(f"dso sweep: wrote {rows.path}" + (f" and {written}" if written else ""), flush=True)
    return run_dir


def accuracy_by_type(items: Sequence[dict], probs) -> list[dict]:
    """Unambiguous accuracy (soft) per question type (``question_type``), with binomial-free SEs."""
    out = []
    correct = [
        (it["question_type"], float(probs[i, it["correct"]])) for i, it in enumerate(items) if not it["ambiguous"]
    ]
    for qtype in sorted({t for t, _ in correct}):
        values = np.array([p for t, p in correct if t == qtype])
        out.append({"question_type": qtype, "unamb_acc": float(values.mean()), "unamb_acc_se": mean_se(values),
                    "n_unambiguous": len(values)})  # fmt: skip
    return out


def type_table(type_rows: Sequence[dict]) -> str:
    """Unambiguous accuracy per question type: one row per (benchmark, split, type), one column per ω."""
    frame = pd.DataFrame(type_rows)
    index = ["benchmark", "attribute", "split", "question_type"]
    wide = frame.pivot_table(index=index, columns="alpha", values="unamb_acc")
    wide.columns = [f"acc w={s:g}" for s in wide.columns]
    records = wide.reset_index().to_dict("records")
    return markdown_table(records, [*index, *wide.columns])
