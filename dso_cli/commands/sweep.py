"""``dso sweep``: evaluate a run's artifact at every strength of a grid; writes ``sweep.csv``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from dso_cli.benchmarks import build_benchmark, neutral_text, split_items
from dso_cli.benchmarks.neutral_text import TextCorpus
from dso_cli.commands.common import load_from_config, markdown_table, merge_into_csv, seed_everything
from dso_cli.errors import DsoError
from dso_cli.evaluation import TEXT_COLUMNS, capability_cost, evaluate_strengths, prompt_sequences
from dso_cli.leakage import check_no_leakage
from dso_cli.metrics import mean_se
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

RUN_SECTIONS = ("model", "bias_benchmark", "scoring", "steering_method", "optimizer")
SWEEP_COLUMNS = [
    "method", "alpha", "benchmark", "split", "pob", "pob_se", "pob_hard", "stereotype_gap",
    "stereotype_gap_hard", "unamb_acc", "unamb_acc_se", "unamb_acc_hard", "refusal_rate", "kl", *TEXT_COLUMNS,
    "n_ambiguous", "n_unambiguous",
]  # fmt: skip
TYPE_COLUMNS = ["method", "benchmark", "split", "alpha", "question_type", "unamb_acc", "unamb_acc_se", "n_unambiguous"]
TABLE_COLUMNS = [
    "benchmark", "split", "alpha", "pob", "pob_se", "unamb_acc", "text_kl", "text_ppl", "prompt_kl",
]  # fmt: skip


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
    cfg: DictConfig, overrides: Sequence[str], verb: str, evaluated: Sequence[str] = ()
) -> tuple[Path, DictConfig, OptionScorer, Artifact, datasets.DatasetDict]:
    """A verb that evaluates a trained run: its directory, merged config, scorer, checked artifact and
    benchmark splits. Everything that can be refused (a garbled artifact, an ``evaluated`` split that
    shares items with the training items) is checked before the model loads; nothing is written here
    (the verb saves ``<verb>_config.yaml`` with its first result)."""
    run_dir, cfg = run_config(cfg, overrides)
    artifact_dir = run_dir / ARTIFACT_DIR
    if not (artifact_dir / "manifest.json").is_file():
        raise DsoError(f"run_dir {run_dir} has no trained artifact ({artifact_dir}); run `dso train` first")
    artifact = Artifact.load(artifact_dir)
    splits = build_benchmark(cfg.bias_benchmark, cfg.model)
    held_out = {s: split_items(splits, s) for s in evaluated if s != "train"}
    train = split_items(splits, "train") if "train" in splits else None
    note = check_no_leakage(artifact.manifest, held_out, overrides, train)
    if note:
        print(f"dso {verb}: note: {note}", flush=True)
    seed_everything(int(cfg.seed))
    loaded, scorer = load_from_config(cfg)
    artifact.check_model(loaded.describe())
    artifact.check_fits(loaded.model)
    return run_dir, cfg, scorer, artifact, splits


def run_sweep(cfg: DictConfig, overrides: Sequence[str] = ()) -> Path:
    alphas = parse_alpha(cfg.alpha)
    run_dir, cfg, scorer, artifact, splits = load_run_artifact(cfg, overrides, "sweep", cfg.sweep.splits)
    if not any(o.lstrip("+").startswith("alpha=") for o in overrides):  # the method's own default grid
        alphas = parse_alpha(artifact.manifest.get("strength", {}).get("default_grid", cfg.alpha))
    corpus = heldout_corpus(cfg)
    print(f"dso sweep: {artifact.method} from {run_dir}, strengths {alphas}", flush=True)

    rows: list[dict] = []
    type_rows: list[dict] = []
    sweep_csv, types_csv = run_dir / "sweep.csv", run_dir / "sweep_types.csv"
    key = ["method", "benchmark", "split", "alpha"]

    def record(row: dict, split: str, benchmark: str, cost: dict[float, dict[str, float]]) -> None:
        """Rewrite sweep.csv (and sweep_types.csv) with this row added; other rows are kept."""
        alpha = row["alpha"]
        measured = text_cost[alpha] | cost[alpha]
        head = {"method": artifact.method, "benchmark": benchmark, "split": split}
        type_rows.extend(head | {"alpha": alpha, **qtype} for qtype in row.pop("_types", []))
        if not rows:  # provenance only once there is a result to go with it
            save_provenance(run_dir, cfg, prefix="sweep_")
        rows.append(head | row | measured)
        merge_into_csv(sweep_csv, pd.DataFrame(rows).reindex(columns=SWEEP_COLUMNS), key, sort=True)
        if type_rows:
            new = pd.DataFrame(type_rows).reindex(columns=TYPE_COLUMNS)
            merge_into_csv(types_csv, new, [*key, "question_type"], sort=True)

    batch = int(cfg.heldout_text.batch_size)
    text_cost = capability_cost(scorer, artifact, alphas, corpus=corpus, batch_size=batch, desc="sweep")
    for split in cfg.sweep.splits:
        for benchmark, items in by_benchmark(split_items(splits, split)).items():
            desc = f"sweep {split}" + (f" {benchmark}" if benchmark != cfg.bias_benchmark.name else "")
            prompts = prompt_sequences(scorer, items, int(cfg.heldout_text.prompt_items))
            cost = capability_cost(scorer, artifact, alphas, corpus=None, prompts=prompts, batch_size=batch, desc=desc)
            evaluate_strengths(
                scorer,
                artifact,
                items,
                alphas,
                bootstrap_reps=int(cfg.sweep.bootstrap_reps),
                seed=int(cfg.seed),
                on_row=lambda row, s=split, b=benchmark, c=cost: record(row, s, b, c),
                desc=desc,
                extra_metrics=lambda items, probs: {"_types": accuracy_by_type(items, probs)},
            )
    print(markdown_table(rows, TABLE_COLUMNS))
    if type_rows:
        print(type_table(type_rows))
    print(f"dso sweep: wrote {sweep_csv}" + (f" and {types_csv.name}" if type_rows else ""), flush=True)
    return run_dir


def by_benchmark(items: Sequence[dict]) -> dict[str, list[dict]]:
    """A split's items per member benchmark (one group, except for a mixture), in order."""
    groups: dict[str, list[dict]] = {}
    for item in items:
        groups.setdefault(item["benchmark"], []).append(item)
    return groups


def heldout_corpus(cfg: DictConfig) -> TextCorpus:
    """The held-out neutral text of ``cfg.heldout_text``; refused when the run trained on any of it."""
    text = cfg.heldout_text
    corpus = neutral_text.build(path=text.path, max_passages=text.max_passages, max_tokens=text.max_tokens,
                                name="heldout_text")  # fmt: skip
    if int(OmegaConf.select(cfg, "optimizer.kl_text_passages", default=0) or 0) > 0:
        trained = neutral_text.read_passages(OmegaConf.select(cfg, "optimizer.kl_text_path"), "train",
                                             what="optimizer.kl_text_path")  # fmt: skip
        shared = neutral_text.overlap(trained, corpus.passages)
        if shared:
            raise DsoError(
                f"heldout_text shares {shared} passages with the run's training text (optimizer.kl_text_path): "
                "text_kl would not be held out; pass another heldout_text.path"
            )
    return corpus


def accuracy_by_type(items: Sequence[dict], probs) -> list[dict]:
    """Unambiguous accuracy (soft) per question type (the items' ``attribute``), with binomial-free SEs."""
    out = []
    correct = [(it["attribute"], float(probs[i, it["correct"]])) for i, it in enumerate(items) if not it["ambiguous"]]
    for qtype in sorted({t for t, _ in correct}):
        values = np.array([p for t, p in correct if t == qtype])
        out.append({"question_type": qtype, "unamb_acc": float(values.mean()), "unamb_acc_se": mean_se(values),
                    "n_unambiguous": len(values)})  # fmt: skip
    return out


def type_table(type_rows: Sequence[dict]) -> str:
    """Unambiguous accuracy per question type: one row per (benchmark, split, type), one column per ω."""
    frame = pd.DataFrame(type_rows)
    wide = frame.pivot_table(index=["benchmark", "split", "question_type"], columns="alpha", values="unamb_acc")
    wide.columns = [f"acc w={a:g}" for a in wide.columns]
    records = wide.reset_index().to_dict("records")
    return markdown_table(records, ["benchmark", "split", "question_type", *wide.columns])
