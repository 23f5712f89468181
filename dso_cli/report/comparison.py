"""The report of ``dso compare``: per-point option probabilities kept for the paired bootstrap, the
methods' hypervolumes with standard errors, and ``compare.md`` / ``summary.csv`` / ``pareto.png``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig
from torch import Tensor

from dso_cli.errors import DsoError
from dso_cli.io import atomic_write, write_text
from dso_cli.metrics import bootstrap_hypervolumes
from dso_cli.pipeline.results import markdown_table
from dso_cli.report.plots import pareto_plot
from dso_cli.report.tables import EVIDENCE, PER_DECISION, curve_summary, operating_points, pareto_points, verdicts


def point_key(method: str, strength: float) -> str:
    return f"{method}@{float(strength)!r}"


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


def reference_method(methods: Sequence[str]) -> str | None:
    """The method the others' hypervolumes are compared with (``dso_minus_hv``): the first trained one."""
    from dso_cli.steering.method import method_class

    for name in methods:
        try:
            if method_class(name).trained:
                return name
        except DsoError:  # a method of a package not imported here: not a reference
            continue
    return None


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
    reference = reference_method(list(order))
    shown = shown.sort_values(["method", "alpha"], key=lambda c: c.map(order) if c.name == "method" else c)
    summary = curve_summary(shown).set_index("curve")
    chosen = operating_points(data, select, report, float(cfg.compare.max_acc_drop)).set_index("method")
    table = []
    for method in order:
        if method not in summary.index:
            continue
        row = {"method": method, "hypervolume": summary.loc[method, "hypervolume"],
               "monotone": bool(summary.loc[method, "monotone"]), "max_alpha": summary.loc[method, "max_alpha"],
               "pob_at_max": summary.loc[method, "pob_at_max"],
               "fair_by_position": bool(summary.loc[method, "fair_by_position"]),
               "not_reading": bool(summary.loc[method, "not_reading"])}  # fmt: skip
        if draws is not None and method in draws:
            row["hypervolume_se"] = float(np.std(draws[method], ddof=1))
            if reference in draws and method != reference:
                diff = draws[reference] - draws[method]
                row["dso_minus_hv"] = float(summary.loc[reference, "hypervolume"] - row["hypervolume"])
                row["dso_minus_hv_se"] = float(np.std(diff, ddof=1))
                row["dso_better_share"] = float(np.mean(diff > 0))
        if method in chosen.index:
            best = chosen.loc[method]
            row.update({"best_alpha": best["alpha"], "pob": best["pob"], "pob_se": best["pob_se"],
                        **{k: best[k] for k in PER_DECISION}, "pob_change": best["pob_change"],
                        "unamb_acc": best["unamb_acc"], "unamb_acc_se": best["unamb_acc_se"],
                        **{k: best[k] for k in EVIDENCE}, "kl": best["kl"],
                        "text_kl": best["text_kl"], "text_ppl": best["text_ppl"]})  # fmt: skip
        row["ppl_ratio_at_max"] = summary.loc[method, "ppl_ratio_at_max"]
        table.append(row)
    points = pareto_points(shown)
    atomic_write(out_dir / "pareto.csv", lambda tmp: points.to_csv(tmp, index=False))
    atomic_write(out_dir / "summary.csv", lambda tmp: pd.DataFrame(table).to_csv(tmp, index=False))
    benchmark = ", ".join(sorted(data["benchmark"].unique()))
    columns = ["method", "hypervolume", "hypervolume_se", "dso_minus_hv", "dso_minus_hv_se", "dso_better_share",
               "monotone", "fair_by_position", "not_reading", "best_alpha", "pob", "pob_se", "item_bias",
               "item_bias_se", "first_option_rate", "order_dep", "pob_change", "unamb_acc", "unamb_acc_se",
               *EVIDENCE, "kl", "text_kl",
               "text_ppl", "max_alpha", "pob_at_max", "ppl_ratio_at_max"]  # fmt: skip
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
            f"accuracy; pob, pob_se (bootstrap over pairs), item_bias ± item_bias_se (mean over ambiguous items "
            "of |P(pro) - P(anti)|: 0 only when each decision is 50/50), first_option_rate (argmax is the person "
            "listed first), order_dep (|P(X | X first) - P(X | X second)| per counterbalanced pair), "
            f"pob_change (vs the base model), unamb_acc, "
            f"unamb_acc_se and kl (KL to the base on unambiguous items) are its {report} numbers; text_kl and "
            "text_ppl its full-vocabulary per-token KL to the base model and perplexity on held-out neutral "
            "text; ppl_ratio_at_max: held-out perplexity at the largest strength over the base model's. "
            "fair_by_position: POB falls to the largest strength while item_bias or order_dep rises by more "
            "than 2 standard errors (fair in aggregate only, by a position rule). unamb_acc_pro / _anti / _first / "
            "_second: unambiguous accuracy where the correct person is the stereotyped / counter-stereotyped "
            "one, listed first / second (a model that reads the evidence has all four close together). "
            "not_reading: unambiguous accuracy at the largest strength within 2 standard errors of a coin "
            "between the people (50/50 everywhere is not fair: it ignores the evidence).",
            "\n".join(f"- {line}" for line in verdicts(summary.reset_index())),
            f"## Every point ({report})",
            markdown_table(points.to_dict("records"), list(points.columns)),
        ]
    )
    write_text(out_dir / "compare.md", text + "\n")
    pareto_plot(shown, out_dir / "pareto.png", f"steering methods on {benchmark} ({report})")
    print(text)
    return out_dir
