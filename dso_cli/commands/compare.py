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

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from dso_cli.benchmarks import build_benchmark, split_items
from dso_cli.commands.common import load_from_config, markdown_table, merge_into_csv, seed_everything
from dso_cli.commands.extract import store_from_config
from dso_cli.commands.sweep import SWEEP_COLUMNS, heldout_corpus
from dso_cli.commands.train import _fit_dso, kl_text, norm_override, train_config
from dso_cli.errors import DsoError
from dso_cli.evaluation import base_policy, capability_cost, evaluate_strengths, prompt_sequences
from dso_cli.io import atomic_write, write_text
from dso_cli.leakage import RECORD, training_record
from dso_cli.metrics import bootstrap_hypervolumes
from dso_cli.report.plots import pareto_plot
from dso_cli.report.tables import curve_summary, operating_points, pareto_points
from dso_cli.rl.checkpoint import CHECKPOINT
from dso_cli.runs import (
    ARTIFACT_DIR,
    COMPARE_CONFIG,
    COMPARE_PREFIX,
    TRAIN_CONFIG,
    load_train_config,
    new_train_dir,
    parse_alpha,
    save_provenance,
    settings_differences,
    settings_hash,
)
from dso_cli.steering.artifact import MANIFEST, Artifact
from dso_cli.steering.methods import ALL_METHODS, CLOSED_FORM, fit_closed_form, prefetch_for
from dso_cli.targets import instantiate_checked

COMPARE_CSV = "compare.csv"
COMPARE_COLUMNS = SWEEP_COLUMNS


def method_options(cfg: DictConfig, method: str) -> DictConfig:
    """``conf/steering_method/<method>.yaml`` with ``compare.options.<method>`` on top."""
    from dso_cli.config_files import group_config, typed

    options = group_config("steering_method", method)
    extra = OmegaConf.select(cfg, f"compare.options.{method}")
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
    unknown = [m for m in methods if m not in ALL_METHODS]
    if unknown:
        choices = ", ".join(ALL_METHODS)
        raise DsoError(f"unknown steering method {unknown[0]!r} in compare.methods (choose from: {choices})")
    if not methods:
        raise DsoError("compare.methods is empty")
    methods = list(dict.fromkeys(methods))
    grids = {m: cfg.compare.grids.get(m) for m in methods}
    for grid in grids.values():
        if grid is not None:
            parse_alpha(grid)
    for method in cfg.compare.get("options") or {}:
        if method not in ALL_METHODS:
            raise DsoError(f"compare.options.{method}: unknown steering method (choose from: {', '.join(ALL_METHODS)})")
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
    tcfg = train_config(cfg) if "dso" in methods and not cfg.compare.dso_run else None
    seed_everything(int(cfg.seed))
    splits = build_benchmark(cfg.bias_benchmark, cfg.model)
    for split in splits_wanted:
        split_items(splits, split)  # fails fast on a split the benchmark lacks
    train_items = split_items(splits, "train")
    if not any(item["ambiguous"] for item in train_items):
        raise DsoError(f"bias={cfg.bias_benchmark.name} has no ambiguous training items to fit the methods on")
    loaded, scorer = load_from_config(cfg)
    provenance = {"device": str(loaded.device), "settings_sha256": settings_hash(cfg)}
    save_provenance(run_dir, cfg, prefix=COMPARE_PREFIX, extra=provenance)
    print(f"dso compare: {', '.join(methods)} on {cfg.bias_benchmark.name}; run directory {run_dir}", flush=True)

    artifacts = fit_all(cfg, run_dir, methods, loaded, scorer, splits, train_items, tcfg)
    alphas = {
        m: parse_alpha(grids[m] if grids[m] is not None else artifacts[m].manifest["strength"]["default_grid"])
        for m in methods
    }
    data, probs = evaluate_all(cfg, run_dir, methods, artifacts, alphas, scorer, splits, splits_wanted)
    report_split = cfg.compare.report_split
    draws = hypervolume_draws(cfg, data, probs[report_split], split_items(splits, report_split))
    out_dir = write_compare_report(data, run_dir / "report", cfg, draws)
    save_provenance(out_dir, cfg, extra={"runs": [str(run_dir)]})
    print(f"dso compare: wrote {run_dir / COMPARE_CSV} and {out_dir}/compare.md, pareto.png", flush=True)
    return run_dir


def fit_all(
    cfg: DictConfig,
    run_dir: Path,
    methods: Sequence[str],
    loaded,
    scorer,
    splits,
    train_items: list[dict],
    tcfg,
) -> dict[str, Artifact]:
    """Each method's artifact: loaded from ``<run_dir>/<method>/artifact`` when already fitted."""
    artifacts: dict[str, Artifact] = {}
    todo = [m for m in methods if not (run_dir / m / ARTIFACT_DIR / MANIFEST).is_file()]
    for method in methods:
        if method not in todo:
            artifacts[method] = Artifact.load(run_dir / method / ARTIFACT_DIR, loaded.describe())
            print(f"dso compare: {method} already fitted, loaded from {run_dir / method}", flush=True)
    val_items = split_items(splits, "val") if "val" in splits else None
    store = store_from_config(cfg, scorer, train_items)
    closed = [m for m in todo if m in CLOSED_FORM]
    options = {m: OmegaConf.to_container(method_options(cfg, m), resolve=True) for m in closed}
    started = time.perf_counter()
    prefetch_for(closed, loaded, store, options, norm_modules=norm_override(cfg), can_select=bool(val_items))
    for line in store.cache_log:
        print(f"dso compare: {line}", flush=True)
    if store.passes:
        print(f"dso compare: activations of {len(store)} training items recorded in "
              f"{time.perf_counter() - started:.0f} s (one run over them for all baselines)", flush=True)  # fmt: skip
    for method in todo:
        method_dir = run_dir / method
        reused = method == "dso" and bool(cfg.compare.dso_run)
        method_cfg = load_train_config(Path(cfg.compare.dso_run)) if reused else method_config(cfg, method)
        save_provenance(method_dir, method_cfg, extra={"device": str(loaded.device), "compare": str(run_dir)})
        started = time.perf_counter()
        if reused:
            artifact = reuse_dso(cfg, loaded)
        elif method == "dso":
            OmegaConf.set_struct(method_cfg, False)
            method_cfg.resume = (method_dir / CHECKPOINT).is_file()  # an interrupted comparison continues DSO
            text = kl_text(cfg) if tcfg.kl_text_passages > 0 else []
            val_text = kl_text(cfg, "val") if tcfg.eval_every > 0 else []
            reward = instantiate_checked(cfg.reward, "reward")
            artifact = _fit_dso(
                method_cfg, method_dir, loaded, scorer, train_items, reward, tcfg, val_items, text, val_text
            )
        else:
            artifact = fit_closed_form(
                method, loaded, store, options[method], norm_modules=norm_override(cfg), val_items=val_items
            )
        seconds = time.perf_counter() - started
        artifact.manifest["train_metrics"]["fit_seconds"] = seconds
        artifact.manifest.setdefault(RECORD, training_record(train_items))
        artifact.save(method_dir / ARTIFACT_DIR)
        artifacts[method] = artifact
        print(f"dso compare: fitted {method} in {seconds:.0f} s", flush=True)
    return artifacts


def reuse_dso(cfg: DictConfig, loaded) -> Artifact:
    """The artifact of ``compare.dso_run``, which must be a DSO run on this model and benchmark."""
    source = Path(cfg.compare.dso_run)
    if not (source / TRAIN_CONFIG).is_file():
        raise DsoError(f"compare.dso_run={source} is not a train run directory (no {TRAIN_CONFIG})")
    trained = load_train_config(source)
    if OmegaConf.select(trained, "bias_benchmark.name") != cfg.bias_benchmark.name:
        raise DsoError(
            f"compare.dso_run={source} was trained on bias={OmegaConf.select(trained, 'bias_benchmark.name')}, "
            f"not bias={cfg.bias_benchmark.name}"
        )
    artifact = Artifact.load(source / ARTIFACT_DIR, loaded.describe())
    if artifact.method != "dso":
        raise DsoError(f"compare.dso_run={source} holds a {artifact.method} artifact, not dso")
    artifact.manifest["train_metrics"]["reused_from"] = str(source)
    return artifact


def evaluate_all(
    cfg: DictConfig,
    run_dir: Path,
    methods: Sequence[str],
    artifacts: dict[str, Artifact],
    alphas: dict[str, list[float]],
    scorer,
    splits,
    split_names: Sequence[str],
) -> tuple[pd.DataFrame, dict[str, dict[str, Tensor]]]:
    """Every (split, method, ω) not yet in ``compare.csv`` (or whose per-item probabilities were not
    kept); the base model is scored once per split. Returns the rows and, per split, the option
    probabilities of every point (``probs/<split>.safetensors``, keys ``base`` and ``<method>@<ω>``)."""
    path = run_dir / COMPARE_CSV
    earlier = pd.read_csv(path) if path.is_file() else pd.DataFrame(columns=COMPARE_COLUMNS)
    rows: list[dict] = []
    key = ["method", "split", "alpha"]
    kept: dict[str, dict[str, Tensor]] = {}
    corpus = heldout_corpus(cfg)
    text_cost: dict[str, dict[float, dict[str, float]]] = {}  # per method: the same for every split
    batch = int(cfg.heldout_text.batch_size)

    def record(method: str, split: str, row: dict, probs: Tensor, cost: dict[float, dict[str, float]]) -> None:
        kept[split][point_key(method, row["alpha"])] = probs
        save_probs(run_dir, split, kept[split])
        measured = text_cost[method][row["alpha"]] | cost[row["alpha"]]
        rows.append({"method": method, "benchmark": cfg.bias_benchmark.name, "split": split, **row, **measured})
        merge_into_csv(path, pd.DataFrame(rows).reindex(columns=COMPARE_COLUMNS), key)

    for split in split_names:
        kept[split] = load_probs(run_dir, split)
        done = {(r.method, float(r.alpha)) for r in earlier[earlier["split"] == split].itertuples()}
        todo = {m: [a for a in alphas[m] if (m, a) not in done or point_key(m, a) not in kept[split]] for m in methods}
        if not any(todo.values()):
            continue
        items = split_items(splits, split)
        if "base" not in kept[split]:
            kept[split]["base"] = base_policy(scorer, items, desc=split)
        base = kept[split]["base"]
        for method, missing in todo.items():
            if not missing:
                continue
            captured: list[Tensor] = []
            if method not in text_cost or any(a not in text_cost[method] for a in missing):
                text_cost[method] = capability_cost(scorer, artifacts[method], alphas[method], corpus=corpus,
                                                    batch_size=batch, desc=method)  # fmt: skip
            prompts = prompt_sequences(scorer, items, int(cfg.heldout_text.prompt_items))
            cost = capability_cost(scorer, artifacts[method], missing, corpus=None, prompts=prompts,
                                   batch_size=batch, desc=f"{split} {method}")  # fmt: skip
            evaluate_strengths(
                scorer,
                artifacts[method],
                items,
                missing,
                bootstrap_reps=int(cfg.compare.bootstrap_reps),
                seed=int(cfg.seed),
                base=base,
                extra_metrics=lambda _items, probs, c=captured: c.append(probs) or {},
                on_row=lambda row, m=method, s=split, c=captured, cost=cost: record(m, s, row, c[-1], cost),
                desc=f"{split} {method}",
            )
    data = pd.read_csv(path)
    wanted = {(m, s, a) for m in methods for s in split_names for a in alphas[m]}
    keep = [(r.method, r.split, float(r.alpha)) in wanted for r in data.itertuples()]
    return data[keep].reset_index(drop=True), kept


def point_key(method: str, alpha: float) -> str:
    return f"{method}@{float(alpha)!r}"


def save_probs(run_dir: Path, split: str, probs: dict[str, Tensor]) -> None:
    import safetensors.torch

    tensors = {k: v.float().clone().contiguous() for k, v in probs.items()}  # ω = 0 rows share the base's
    atomic_write(run_dir / "probs" / f"{split}.safetensors", lambda tmp: safetensors.torch.save_file(tensors, str(tmp)))


def load_probs(run_dir: Path, split: str) -> dict[str, Tensor]:
    import safetensors.torch

    path = run_dir / "probs" / f"{split}.safetensors"
    return dict(safetensors.torch.load_file(str(path))) if path.is_file() else {}


def hypervolume_draws(
    cfg: DictConfig, data: pd.DataFrame, probs: dict[str, Tensor], items: list[dict]
) -> dict[str, np.ndarray] | None:
    """Paired bootstrap hypervolumes of every method on the report split (None if a point's
    probabilities are missing)."""
    report = data[data["split"] == cfg.compare.report_split]
    curves: dict[str, list[Tensor]] = {}
    for row in report.sort_values("alpha").itertuples():
        name = point_key(row.method, row.alpha)
        if name not in probs or "base" not in probs:
            return None
        curves.setdefault(row.method, []).append(probs[name])
    reps = int(cfg.compare.hypervolume_bootstrap_reps)
    return bootstrap_hypervolumes(items, curves, probs["base"], reps=reps, seed=int(cfg.seed)) if reps > 1 else None


def write_compare_report(
    data: pd.DataFrame, out_dir: Path, cfg: DictConfig, draws: dict[str, np.ndarray] | None = None
) -> Path:
    """``compare.md`` (per-method summary + every point), ``summary.csv``, ``pareto.csv`` and
    ``pareto.png`` (all fronts). ``draws``: bootstrap hypervolumes per method, for standard errors and
    the paired difference to DSO."""
    select, report = cfg.compare.select_split, cfg.compare.report_split
    shown = data[data["split"] == report].copy()
    shown["curve"] = shown["method"]
    shown["run"] = out_dir.parent.name
    order = {m: i for i, m in enumerate(dict.fromkeys(data["method"]))}
    shown = shown.sort_values(["method", "alpha"], key=lambda c: c.map(order) if c.name == "method" else c)
    summary = curve_summary(shown).set_index("curve")
    chosen = operating_points(data, select, report, float(cfg.compare.max_acc_drop)).set_index("method")
    table = []
    for method in order:
        if method not in summary.index:
            continue
        row = {"method": method, "hypervolume": summary.loc[method, "hypervolume"],
               "monotone": bool(summary.loc[method, "monotone"]), "max_alpha": summary.loc[method, "max_alpha"],
               "pob_at_max": summary.loc[method, "pob_at_max"]}  # fmt: skip
        if draws is not None and method in draws:
            row["hypervolume_se"] = float(np.std(draws[method], ddof=1))
            if "dso" in draws and method != "dso":
                diff = draws["dso"] - draws[method]
                row["dso_minus_hv"] = float(summary.loc["dso", "hypervolume"] - row["hypervolume"])
                row["dso_minus_hv_se"] = float(np.std(diff, ddof=1))
                row["dso_better_share"] = float(np.mean(diff > 0))
        if method in chosen.index:
            best = chosen.loc[method]
            row.update({"best_alpha": best["alpha"], "pob": best["pob"], "pob_se": best["pob_se"],
                        "pob_change": best["pob_change"], "unamb_acc": best["unamb_acc"],
                        "unamb_acc_se": best["unamb_acc_se"], "kl": best["kl"], "text_kl": best["text_kl"],
                        "text_ppl": best["text_ppl"]})  # fmt: skip
        row["ppl_ratio_at_max"] = summary.loc[method, "ppl_ratio_at_max"]
        table.append(row)
    points = pareto_points(shown)
    atomic_write(out_dir / "pareto.csv", lambda tmp: points.to_csv(tmp, index=False))
    atomic_write(out_dir / "summary.csv", lambda tmp: pd.DataFrame(table).to_csv(tmp, index=False))
    benchmark = ", ".join(sorted(data["benchmark"].unique()))
    columns = ["method", "hypervolume", "hypervolume_se", "dso_minus_hv", "dso_minus_hv_se", "dso_better_share",
               "monotone", "best_alpha", "pob", "pob_se", "pob_change", "unamb_acc", "unamb_acc_se", "kl",
               "text_kl", "text_ppl", "max_alpha", "pob_at_max", "ppl_ratio_at_max"]  # fmt: skip
    columns = [c for c in columns if any(c in row for row in table)]
    text = "\n\n".join(
        [
            f"# Steering methods compared: {benchmark}, fronts on {report}",
            markdown_table(table, columns),
            f"hypervolume: area of (POB ↓, unambiguous accuracy ↑) dominated by the method's {report} points, "
            "bounded by the base model's POB and accuracy 0 (larger is better); hypervolume_se, and "
            "dso_minus_hv ± dso_minus_hv_se (DSO's hypervolume minus the method's) with dso_better_share (the "
            "share of resamples where DSO's is larger), from a paired bootstrap that resamples pairs within "
            "occupations and unambiguous items, the same draw for every method. monotone: POB never rises "
            "from one strength to the next by more than 2 standard errors. best_alpha: the strength with the "
            f"lowest {select} POB among those costing at most {float(cfg.compare.max_acc_drop):g} {select} "
            f"accuracy; pob, pob_se (bootstrap over pairs), pob_change (vs the base model), unamb_acc, "
            f"unamb_acc_se and kl (KL to the base on unambiguous items) are its {report} numbers; text_kl and "
            "text_ppl its full-vocabulary per-token KL to the base model and perplexity on held-out neutral "
            "text; ppl_ratio_at_max: held-out perplexity at the largest strength over the base model's.",
            f"## Every point ({report})",
            markdown_table(points.to_dict("records"), list(points.columns)),
        ]
    )
    write_text(out_dir / "compare.md", text + "\n")
    pareto_plot(shown, out_dir / "pareto.png", f"steering methods on {benchmark} ({report})")
    print(text)
    return out_dir
