"""``dso eval``: one model, one artifact (or none), several strengths, many benchmarks, one table.

The model is loaded once; every bias benchmark (its test split) and every capability set is scored
at every strength (``alpha``). ``eval.csv`` has one row per benchmark × strength with the
``sweep.csv`` columns plus capability accuracy, perplexity and the benchmark-specific columns (empty
where they do not apply).

The run's own benchmark is rebuilt from the run's recorded config, so its test split is exactly the
one held out from training. ``bias.<key>=value`` on the command line reaches every evaluated
benchmark that has that key (e.g. ``bias.path=`` for SynthBias's CSV); ``capability.<key>=value``
likewise for the capability sets.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from dso_cli.benchmarks import build_benchmark, instantiate_builder, mixture, split_items
from dso_cli.benchmarks.neutral_text import TextCorpus
from dso_cli.config import files as config_files
from dso_cli.errors import DsoError
from dso_cli.evaluation import Evaluator, Scores, default_metrics, evaluate_text, load_metrics
from dso_cli.evaluation.decisions import BBQBiasScore, CapabilityAccuracy, ProAntiAccuracy
from dso_cli.io import atomic_write
from dso_cli.pipeline.leakage import check_no_leakage
from dso_cli.pipeline.results import (
    GROUP_COLUMNS,
    GROUP_KEY,
    RowWriter,
    attribute_of,
    by_member,
    group_rows,
    markdown_table,
    result_columns,
)
from dso_cli.pipeline.runs import ARTIFACT_DIR, load_train_config, parse_strengths, save_provenance, typed_keys
from dso_cli.pipeline.setup import load_scored_model
from dso_cli.pipeline.specs import ModelSetup
from dso_cli.pipeline.trained_run import run_config
from dso_cli.steering.artifact import Artifact

OFFLINE_BENCHMARKS = ("occupation", "winobias", "bbq")
BIAS_METRICS = (ProAntiAccuracy(), BBQBiasScore())  # benchmark-specific columns (NaN where they do not apply)
CAPABILITY_METRICS = (CapabilityAccuracy(),)
TEXT_COLUMNS = ["ppl", "kl_se", "n_tokens"]  # a neutral text set's row (its kl is the kl column)
TABLE_COLUMNS = [
    "benchmark", "attribute", "alpha", "pob", "pob_se", "item_bias", "first_option_rate", "order_dep", "unamb_acc",
    "capability_acc", "kl", "ppl",
    "acc_pro_anti_gap", "s_dis", "s_amb",
]  # fmt: skip


def group_config(group: str, name: str) -> DictConfig:
    return config_files.group_config(group, name, where="eval")


def explicit(overrides: Sequence[str], prefix: str) -> list[str]:
    """Keys typed on the command line under ``prefix.`` (e.g. ``bias_benchmark.path=x`` -> ``path``)."""
    return [key[len(prefix) + 1 :] for key in typed_keys(overrides) if key.startswith(f"{prefix}.")]


def with_overrides(base: DictConfig, cfg: DictConfig, prefix: str, keys: Sequence[str]) -> DictConfig:
    """``base`` with the user's ``prefix.key`` values, for the keys ``base`` has, checked against the
    set's schema (``bias.max_hub_rows=abc`` fails here, before the model loads)."""
    out = base.copy()
    for key in keys:
        if key in base:
            OmegaConf.update(out, key, OmegaConf.select(cfg, f"{prefix}.{key}"), force_add=True)
    shown = "bias" if prefix == "bias_benchmark" else prefix
    return config_files.typed(prefix, str(base.get("name")), out, prefix=shown) if keys else out


def check_reached(prefix: str, keys: Sequence[str], configs: Mapping[str, DictConfig]) -> None:
    """A typed ``<prefix>.<key>=`` that no evaluated set has is a typo, not a no-op: refuse it."""
    for key in keys:
        if configs and not any(key.split(".")[0] in c for c in configs.values()):
            known = sorted({k for c in configs.values() for k in c if k not in ("_target_", "name")})
            raise DsoError(
                f"{prefix}.{key} is not a setting of any evaluated set ({', '.join(configs)}); "
                f"their settings: {', '.join(known)}"
            )


def benchmark_names(cfg: DictConfig, run_benchmark: DictConfig | None) -> list[str]:
    if cfg.eval.benchmarks is not None:
        names = list(cfg.eval.benchmarks)
    else:
        names = (mixture.members(run_benchmark) if run_benchmark is not None else []) + list(OFFLINE_BENCHMARKS)
    return list(dict.fromkeys(names))


def benchmark_config(run_cfg: DictConfig | None, name: str) -> DictConfig:
    """The config ``name`` is evaluated with: the run's own (or its mixture member's, so the test split
    is exactly the one held out in training), else the shipped default. A run made before a setting
    existed reads it at its default (a run's config overrides, never removes, the shipped keys)."""
    own = run_cfg.bias_benchmark if run_cfg is not None else None
    if own is not None and own.name == name:
        try:
            return OmegaConf.merge(group_config("bias_benchmark", name), own)
        except (DsoError, OmegaConfBaseException):  # not shipped (a plugin's), or keys the release dropped
            return own
    if own is not None and own.name == mixture.BENCHMARK and name in mixture.members(own):
        shared = OmegaConf.to_container(own, resolve=True)
        assert isinstance(shared, dict)
        return OmegaConf.create(mixture.member_configs(list(own.benchmarks), shared)[name])
    return group_config("bias_benchmark", name)


def eval_run_dir(cfg: DictConfig) -> Path:
    """Where a base-model-only evaluation writes: ``run_dir`` or a new ``outputs/<date>/<time>_<model>_eval``."""
    if cfg.run_dir:
        return Path(cfg.run_dir)
    now = dt.datetime.now()
    return Path(cfg.outputs_root) / f"{now:%Y-%m-%d}" / f"{now:%H-%M-%S}_{cfg.model.name}_eval"


def run_eval(cfg: DictConfig, overrides: Sequence[str] = ()) -> Path:
    strengths = parse_strengths(cfg.alpha)
    run_cfg: DictConfig | None = None
    if cfg.eval.steer:
        run_dir, cfg = run_config(cfg, overrides)
        if not (run_dir / ARTIFACT_DIR / "manifest.json").is_file():
            raise DsoError(f"run_dir {run_dir} has no trained artifact; run `dso train` first or pass eval.steer=false")
        run_cfg = load_train_config(run_dir)
    else:
        run_dir, strengths = eval_run_dir(cfg), [0.0]
    bias_keys, cap_keys = explicit(overrides, "bias_benchmark"), explicit(overrides, "capability")

    # Build every benchmark before loading the model, so a missing file fails in seconds.
    sets: list[tuple[str, str, Any]] = []  # (kind, name, items or corpus)
    names = benchmark_names(cfg, run_cfg.bias_benchmark if run_cfg is not None else None)
    bench_bases = {name: benchmark_config(run_cfg, name) for name in names}
    cap_bases = {name: group_config("capability", name) for name in cfg.eval.capability or []}
    check_reached("bias", bias_keys, bench_bases)
    check_reached("capability", cap_keys, cap_bases)
    for name, base in bench_bases.items():
        bench_cfg = with_overrides(base, cfg, "bias_benchmark", bias_keys)
        sets.append(("bias", name, split_items(build_benchmark(bench_cfg, cfg.model), cfg.eval.split)))
    for name, cap_base in cap_bases.items():
        cap_cfg = with_overrides(cap_base, cfg, "capability", cap_keys)
        built = instantiate_builder(cap_cfg)
        if isinstance(built, TextCorpus):
            sets.append(("text", name, built))
        else:
            sets.append(("capability", name, split_items(built, "test")))

    harness = None
    if cfg.eval.lm_eval_tasks:
        from dso_cli.integrations.harness import check_tasks

        harness = check_tasks(list(cfg.eval.lm_eval_tasks), cfg.eval.lm_eval_include_path)
    artifact = Artifact.load(run_dir / ARTIFACT_DIR) if run_cfg is not None else None
    if artifact is not None and cfg.eval.split != "train":  # evaluating the training fit itself is allowed
        bias_sets = {f"{name}/{cfg.eval.split}": items for kind, name, items in sets if kind == "bias"}
        note = check_no_leakage(artifact.manifest, bias_sets, overrides)
        if note:
            print(f"dso eval: note: {note}", flush=True)
    loaded, scorer = load_scored_model(ModelSetup.from_config(cfg))
    if artifact is not None:
        artifact.check_model(loaded.describe())
        artifact.check_fits(loaded.model)
    method = artifact.method if artifact is not None else "none"
    sizes = ", ".join(f"{name} {len(data.passages) if kind == 'text' else len(data)}" for kind, name, data in sets)
    print(f"dso eval: {method} from {run_dir}, strengths {strengths}; {sizes}", flush=True)

    eval_csv = run_dir / "eval.csv"
    extra = load_metrics(cfg.eval.extra_metrics, "eval.extra_metrics")
    metrics = {
        "bias": default_metrics(extra=[*BIAS_METRICS, *extra]),
        "capability": default_metrics(extra=[*CAPABILITY_METRICS, *extra]),
    }
    columns = result_columns(default_metrics(extra=[*BIAS_METRICS, *CAPABILITY_METRICS, *extra])) + TEXT_COLUMNS
    rows = RowWriter(eval_csv, columns, ["method", "benchmark", "attribute", "split", "alpha"],
                     on_first=lambda: save_provenance(run_dir, cfg, prefix="eval_"))  # fmt: skip
    groups = RowWriter(run_dir / "eval_groups.csv", GROUP_COLUMNS, GROUP_KEY)
    subjects: list[dict] = []

    def record(name: str, split: str, row: dict, scores: Scores | None = None, kind: str = "bias") -> None:
        """``scores``: the set's scores; a bias set's give the per-group selection rates, a capability
        set's the per-subject accuracy, each in a file of its own."""
        head = {"method": method, "benchmark": name, "split": split}
        if scores is not None and kind == "capability":
            for subject in accuracy_by_subject(scores):
                subjects.append({"benchmark": name, "alpha": row["alpha"], **subject})
        if scores is not None and kind == "bias":
            head["attribute"] = attribute_of(scores.items)
            for rate in group_rows(head | {"alpha": row["alpha"]}, scores):
                groups.add(rate)
        rows.add(head | row)

    for kind, name, data in sets:
        if kind == "text":
            evaluate_text(
                scorer, artifact, data, strengths, batch_size=int(cfg.eval.text_batch_size), desc=name,
                on_row=lambda row, name=name: record(name, "text", row),
            )  # fmt: skip
            continue
        split = cfg.eval.split if kind == "bias" else "test"
        evaluator = Evaluator(scorer, metrics[kind], bootstrap_reps=int(cfg.eval.bootstrap_reps), seed=int(cfg.seed))
        parts = by_member(data) if kind == "bias" else {(name, ""): data}  # one row set per attribute
        for (_, attribute), items in parts.items():
            evaluator.evaluate(
                artifact, items, strengths, desc=name + (f" {attribute}" if len(parts) > 1 else ""),
                on_row=lambda row, scores, name=name, split=split, kind=kind: record(name, split, row, scores, kind),
            )  # fmt: skip
    if harness is not None:
        from dso_cli.integrations.harness import harness_rows

        task_rows, metric_rows = harness_rows(
            loaded, artifact, strengths, list(cfg.eval.lm_eval_tasks), harness, limit=cfg.eval.lm_eval_limit,
            batch_size=int(cfg.eval.lm_eval_batch_size),
        )  # fmt: skip
        for row in task_rows:
            rows.add({"method": method, **row})
        frame = pd.DataFrame(metric_rows)
        atomic_write(run_dir / "eval_lm_eval.csv", lambda tmp: frame.to_csv(tmp, index=False))
    if subjects:
        frame = pd.DataFrame(subjects)
        atomic_write(run_dir / "eval_subjects.csv", lambda tmp: frame.to_csv(tmp, index=False))
    print(markdown_table(rows.rows, TABLE_COLUMNS))
    print(f"dso eval: wrote {eval_csv}" + (f" and {groups.path.name}" if groups else ""), flush=True)
    return run_dir


def accuracy_by_subject(scores: Scores) -> list[dict[str, Any]]:
    """A capability set's argmax accuracy per subject (the items' ``cluster``), for ``eval_subjects.csv``."""
    v = scores.view
    hit = (v.choice == v.correct).astype(float)
    return [
        {"subject": name, "accuracy": float(hit[v.cluster == name].mean()), "n": int((v.cluster == name).sum())}
        for name in sorted(set(v.cluster))
    ]
