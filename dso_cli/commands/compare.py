"""``dso compare``: every steering method on one model and benchmark, one table, one plot.

Everything runs in one process with the model loaded once: the closed-form baselines share one run
over the training items (an :class:`ActivationStore`), DSO trains with the configured optimizer (or a
finished ``dso train`` run is reused), and the base model is scored once per split for every
method's ω = 0 and KL. Each method is evaluated on ``val`` and ``test`` over its own grid; its best
operating point is chosen on ``val`` and reported on ``test``. Rows land in ``compare.csv`` as they
are measured and each method's artifact is saved as soon as it is fitted, so rerunning with the same
``run_dir`` resumes an interrupted comparison.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from dso_cli.benchmarks import build_benchmark, split_items
from dso_cli.benchmarks.neutral_text import TextCorpus
from dso_cli.errors import DsoError
from dso_cli.evaluation import Evaluator, Scores, SequenceScores, default_metrics, load_metrics
from dso_cli.pipeline.fitting import Tracking, fit_in_run, train_config, training_inputs
from dso_cli.pipeline.inputs import activation_store, heldout_corpus
from dso_cli.pipeline.leakage import RECORD, training_record
from dso_cli.pipeline.results import RowWriter, attribute_of, result_columns
from dso_cli.pipeline.runs import (
    ARTIFACT_DIR,
    COMPARE_CONFIG,
    COMPARE_PREFIX,
    TRAIN_CONFIG,
    load_train_config,
    new_train_dir,
    parse_strengths,
    save_provenance,
    settings_differences,
    settings_hash,
)
from dso_cli.pipeline.setup import load_scored_model
from dso_cli.pipeline.specs import CacheSettings, HeldoutText, ModelSetup
from dso_cli.report.comparison import hypervolume_draws, load_probs, point_key, save_probs, write_compare_report
from dso_cli.rl.checkpoint import CHECKPOINT
from dso_cli.steering.artifact import MANIFEST, Artifact
from dso_cli.steering.method import FitJob, SteeringMethod, make_method, method_names
from dso_cli.steering.methods import prefetch_for

COMPARE_CSV = "compare.csv"


def method_options(cfg: DictConfig, method: str) -> DictConfig:
    """``conf/steering_method/<method>.yaml`` with ``compare.options.<method>`` on top."""
    from dso_cli.config.files import group_config, group_options, typed

    extra = OmegaConf.select(cfg, f"compare.options.{method}")
    if method not in group_options("steering_method"):  # a method of the user's package: its options are all
        if extra is None or not extra.get("_target_"):
            raise DsoError(f"compare.methods: {method} has no config; set compare.options.{method}._target_=pkg.Class")
        return OmegaConf.create({**OmegaConf.to_container(extra, resolve=True), "name": method})
    options = group_config("steering_method", method)
    for key in extra or {}:
        if key not in options:  # a typo would silently change nothing
            known = ", ".join(k for k in options if k not in ("_target_", "name"))
            raise DsoError(f"compare.options.{method}.{key} is not a setting of {method} (its settings: {known})")
    if extra is None:
        return options
    merged = OmegaConf.merge(OmegaConf.to_container(options), extra)
    assert isinstance(merged, DictConfig)
    return typed("steering_method", method, merged, prefix=f"compare.options.{method}")


def method_config(cfg: DictConfig, method: str) -> DictConfig:
    """The train config a method's run directory records (so ``dso sweep run_dir=<it>`` works)."""
    out = cfg.copy()
    OmegaConf.set_struct(out, False)
    out.steering_method = method_options(cfg, method)
    out.verb = "train"
    out.pop("compare", None)
    return out


def check_compare(cfg: DictConfig) -> tuple[list[str], dict[str, str | None]]:
    """The methods to compare (known, deduplicated) and their grids (each one parses; None: default)."""
    methods = list(cfg.compare.methods)
    options = cfg.compare.get("options") or {}
    plugins = [m for m in options if OmegaConf.select(cfg, f"compare.options.{m}._target_")]
    for name in plugins:  # a method of the user's package (allow_targets): registered by importing it
        made = make_method(method_options(cfg, name))
        if made.name != name:
            raise DsoError(f"compare.options.{name}._target_ is the method {made.name!r}; list it as {made.name}")
    known = sorted(set(method_names()) | set(plugins))
    unknown = [m for m in methods if m not in known]
    if unknown:
        choices = ", ".join(known)
        raise DsoError(f"unknown steering method {unknown[0]!r} in compare.methods (choose from: {choices})")
    if not methods:
        raise DsoError("compare.methods is empty")
    methods = list(dict.fromkeys(methods))
    for label, source in (cfg.compare.get("runs") or {}).items():
        if label in known or label in methods:
            raise DsoError(f"compare.runs.{label}: a label must not be a method's name (e.g. {label}_seed1)")
        if not (Path(str(source)) / TRAIN_CONFIG).is_file():
            raise DsoError(f"compare.runs.{label}={source} is not a train run directory (no {TRAIN_CONFIG})")
    grids = {m: cfg.compare.grids.get(m) for m in methods}
    for grid in grids.values():
        if grid is not None:
            parse_strengths(grid)
    for method in options:
        if method not in known:
            raise DsoError(f"compare.options.{method}: unknown steering method (choose from: {', '.join(known)})")
        method_options(cfg, method)  # an unknown option fails here, before any model loads
    return methods, grids


def check_resumable(run_dir: Path, cfg: DictConfig) -> None:
    """A run_dir that already holds a comparison is resumed only with the settings it was made with:
    another seed, grid, optimizer or benchmark size would mix rows of two experiments in one table."""
    earlier = run_dir / COMPARE_CONFIG
    if not earlier.is_file():
        return
    differences = settings_differences(OmegaConf.load(earlier), cfg)
    if differences:
        more = f" and {len(differences) - 3} more" if len(differences) > 3 else ""
        raise DsoError(
            f"{run_dir} holds a comparison made with other settings: {'; '.join(differences[:3])}{more}; "
            "pass a new run_dir, or the same settings to resume it"
        )


def run_compare(cfg: DictConfig, overrides: Sequence[str] = ()) -> Path:
    methods, grids = check_compare(cfg)
    splits_wanted = list(cfg.compare.splits)
    for needed in (cfg.compare.select_split, cfg.compare.report_split):
        if needed not in splits_wanted:
            raise DsoError(f"compare.splits={splits_wanted} must include {needed!r}")
    run_dir = Path(cfg.run_dir) if cfg.run_dir else new_train_dir(cfg, under="compare")
    check_resumable(run_dir, cfg)
    cfg = cfg.copy()
    cfg.run_dir = str(run_dir)
    objects = {m: make_method(method_options(cfg, m)) for m in methods}
    if any(o.trained for o in objects.values()) and not cfg.compare.dso_run:
        train_config(cfg)  # bad optimizer values fail before the model loads
    text = HeldoutText.from_config(cfg)
    corpus = heldout_corpus(text)  # a clash with the training text is refused before the model loads
    splits = build_benchmark(cfg.bias_benchmark, cfg.model)
    for split in splits_wanted:
        split_items(splits, split)  # fails fast on a split the benchmark lacks
    train_items = split_items(splits, "train")
    if not any(item["ambiguous"] for item in train_items):
        raise DsoError(f"bias={cfg.bias_benchmark.name} has no ambiguous training items to fit the methods on")
    setup = ModelSetup.from_config(cfg)
    loaded, scorer = load_scored_model(setup)
    provenance = {"device": str(loaded.device), "settings_sha256": settings_hash(cfg)}
    save_provenance(run_dir, cfg, prefix=COMPARE_PREFIX, extra=provenance)
    print(f"dso compare: {', '.join(methods)} on {cfg.bias_benchmark.name}; run directory {run_dir}", flush=True)

    artifacts = fit_all(cfg, run_dir, objects, FitJob(loaded, scorer, train_items, norm_modules=setup.norm_modules),
                        splits)  # fmt: skip
    for label, source in (cfg.compare.get("runs") or {}).items():
        artifacts[label] = trained_artifact(cfg, loaded, Path(str(source)), f"compare.runs.{label}")
        methods.append(label)
        grids[label] = cfg.compare.grids.get(label, cfg.compare.grids.get(artifacts[label].method))
        print(f"dso compare: {label} loaded from {source}", flush=True)
    strengths = {
        m: parse_strengths(grids[m] if grids[m] is not None else artifacts[m].manifest["strength"]["default_grid"])
        for m in methods
    }
    data, probs = evaluate_all(cfg, run_dir, methods, artifacts, strengths, scorer, splits, splits_wanted, text,
                               corpus)  # fmt: skip
    report_split = cfg.compare.report_split
    draws = hypervolume_draws(cfg, data, probs[report_split], split_items(splits, report_split))
    out_dir = write_compare_report(data, run_dir / "report", cfg, draws)
    save_provenance(out_dir, cfg, prefix="report_", extra={"runs": [str(run_dir)]})
    print(f"dso compare: wrote {run_dir / COMPARE_CSV} and {out_dir}/compare.md, pareto.png", flush=True)
    return run_dir


def fit_all(
    cfg: DictConfig, run_dir: Path, methods: dict[str, SteeringMethod], shared: FitJob, splits
) -> dict[str, Artifact]:
    """Each method's artifact: loaded from ``<run_dir>/<method>/artifact`` when already fitted, else fitted
    on ``shared``'s model and training items (closed-form methods from one activation store)."""
    loaded, scorer, train_items = shared.loaded, shared.scorer, list(shared.train_items)
    artifacts: dict[str, Artifact] = {}
    todo = [m for m in methods if not (run_dir / m / ARTIFACT_DIR / MANIFEST).is_file()]
    for name in methods:
        if name not in todo:
            artifacts[name] = Artifact.load(run_dir / name / ARTIFACT_DIR, loaded.describe())
            print(f"dso compare: {name} already fitted, loaded from {run_dir / name}", flush=True)
    val_items = split_items(splits, "val") if "val" in splits else None
    store = activation_store(scorer, train_items, str(cfg.bias_benchmark.name), CacheSettings.from_config(cfg))
    closed = [methods[m] for m in todo if not methods[m].trained]
    started = time.perf_counter()
    prefetch_for(closed, loaded, store, norm_modules=shared.norm_modules, can_select=bool(val_items))
    for line in store.cache_log:
        print(f"dso compare: {line}", flush=True)
    if store.passes:
        print(f"dso compare: activations of {len(store)} training items recorded in "
              f"{time.perf_counter() - started:.0f} s (one run over them for all baselines)", flush=True)  # fmt: skip
    for name in todo:
        method, method_dir = methods[name], run_dir / name
        reused = method.trained and bool(cfg.compare.dso_run)
        method_cfg = load_train_config(Path(cfg.compare.dso_run)) if reused else method_config(cfg, name)
        save_provenance(method_dir, method_cfg, extra={"device": str(loaded.device), "compare": str(run_dir)})
        started = time.perf_counter()
        if reused:
            artifact = reuse_trained(cfg, loaded, method)
        else:
            job = FitJob(loaded, scorer, train_items, val_items, store=store, norm_modules=shared.norm_modules)
            resume = (method_dir / CHECKPOINT).is_file()  # an interrupted comparison continues a trained method
            training = training_inputs(method_cfg) if method.trained else None
            tracking = Tracking.from_config(method_cfg) if method.trained else None
            artifact = fit_in_run(method, job, method_dir, training=training, tracking=tracking, resume=resume)
        seconds = time.perf_counter() - started
        artifact.manifest["train_metrics"]["fit_seconds"] = seconds
        artifact.manifest.setdefault(RECORD, training_record(train_items))
        artifact.save(method_dir / ARTIFACT_DIR)
        artifacts[name] = artifact
        print(f"dso compare: fitted {name} in {seconds:.0f} s", flush=True)
    return artifacts


def reuse_trained(cfg: DictConfig, loaded, method: SteeringMethod) -> Artifact:
    """The artifact of ``compare.dso_run``, which must be a run of ``method`` on this model and benchmark."""
    artifact = trained_artifact(cfg, loaded, Path(cfg.compare.dso_run), "compare.dso_run")
    if artifact.method != method.name:
        raise DsoError(f"compare.dso_run={cfg.compare.dso_run} holds a {artifact.method} artifact, not {method.name}")
    return artifact


def trained_artifact(cfg: DictConfig, loaded, source: Path, key: str) -> Artifact:
    """The artifact of the train run ``source`` (named by the config ``key`` in errors), which must have
    been trained on this benchmark and fit this model."""
    if not (source / TRAIN_CONFIG).is_file():
        raise DsoError(f"{key}={source} is not a train run directory (no {TRAIN_CONFIG})")
    trained = load_train_config(source)
    if OmegaConf.select(trained, "bias_benchmark.name") != cfg.bias_benchmark.name:
        raise DsoError(
            f"{key}={source} was trained on bias={OmegaConf.select(trained, 'bias_benchmark.name')}, "
            f"not bias={cfg.bias_benchmark.name}"
        )
    artifact = Artifact.load(source / ARTIFACT_DIR, loaded.describe())
    artifact.manifest["train_metrics"]["reused_from"] = str(source)
    return artifact


def evaluate_all(
    cfg: DictConfig,
    run_dir: Path,
    methods: Sequence[str],
    artifacts: dict[str, Artifact],
    strengths: dict[str, list[float]],
    scorer,
    splits,
    split_names: Sequence[str],
    text: HeldoutText,
    corpus: TextCorpus,
) -> tuple[pd.DataFrame, dict[str, dict[str, Tensor]]]:
    """Every (split, method, ω) not yet in ``compare.csv`` (or whose per-item probabilities were not
    kept); the base model is scored once per split. Returns the rows and, per split, the option
    probabilities of every point (``probs/<split>.safetensors``, keys ``base`` and ``<method>@<ω>``)."""
    metrics = default_metrics(extra=load_metrics(cfg.compare.extra_metrics, "compare.extra_metrics"))
    path = run_dir / COMPARE_CSV
    columns = result_columns(metrics)
    earlier = pd.read_csv(path) if path.is_file() else pd.DataFrame(columns=columns)
    rows = RowWriter(path, columns, ["method", "split", "alpha"])
    kept: dict[str, dict[str, Tensor]] = {}
    text_scores: dict[str, dict[float, SequenceScores]] = {}  # per method: the same for every split
    evaluator = Evaluator(scorer, metrics, bootstrap_reps=int(cfg.compare.bootstrap_reps), seed=int(cfg.seed),
                          prompt_items=text.prompt_items, text_batch_size=text.batch_size)  # fmt: skip

    def record(method: str, split: str, row: dict, scores: Scores) -> None:
        kept[split][point_key(method, row["alpha"])] = scores.probs
        save_probs(run_dir, split, kept[split])
        rows.add({"method": method, "benchmark": cfg.bias_benchmark.name, "attribute": attribute_of(scores.items),
                  "split": split, **row})  # fmt: skip

    for split in split_names:
        kept[split] = load_probs(run_dir, split)
        done = {(r.method, float(r.alpha)) for r in earlier[earlier["split"] == split].itertuples()}
        todo = {
            m: [s for s in strengths[m] if (m, s) not in done or point_key(m, s) not in kept[split]] for m in methods
        }
        if not any(todo.values()):
            continue
        items = split_items(splits, split)
        if "base" not in kept[split]:
            kept[split]["base"] = evaluator.base_policy(items, desc=split)
        base = kept[split]["base"]
        for method, missing in todo.items():
            if not missing:
                continue
            if method not in text_scores or any(s not in text_scores[method] for s in missing):
                text_scores[method] = evaluator.text_scores(artifacts[method], corpus, strengths[method], desc=method)
            evaluator.evaluate(
                artifacts[method], items, missing, base=base, text=text_scores[method], desc=f"{split} {method}",
                on_row=lambda row, scores, m=method, s=split: record(m, s, row, scores),
            )  # fmt: skip
    data = pd.read_csv(path)
    wanted = {(m, split, s) for m in methods for split in split_names for s in strengths[m]}
    keep = [(r.method, r.split, float(r.alpha)) in wanted for r in data.itertuples()]
    return data[keep].reset_index(drop=True), kept
