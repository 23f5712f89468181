"""The Pareto table: every (run, method, ω) point, whether it is on the front, and a per-curve summary."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from dso_cli.errors import DsoError
from dso_cli.metrics import hypervolume, is_monotone, pareto_mask
from dso_cli.report.seeds import group_label, mean_over_seeds, seed_groups

POINT_COLUMNS = [
    "curve", "run", "method", "alpha", "pob", "pob_se", "item_bias", "item_bias_se", "first_option_rate",
    "order_dep", "stereotype_gap", "unamb_acc", "unamb_acc_hard", "unamb_acc_pro", "unamb_acc_anti",
    "unamb_acc_first", "unamb_acc_second", "refusal_rate", "kl", "text_kl", "text_ppl", "prompt_kl", "on_front",
    "n_seeds", "pob_seed_sd", "item_bias_seed_sd", "first_option_rate_seed_sd", "order_dep_seed_sd",
    "unamb_acc_seed_sd", "text_kl_seed_sd",
]  # fmt: skip


def load_sweeps(run_dirs: Sequence[Path], split: str) -> pd.DataFrame:
    """All runs' ``sweep.csv`` rows of one split, with ``run`` and ``curve`` (one curve per run × method).
    Runs that differ only in their seed are one curve: the mean over seeds, with ``n_seeds`` and each
    metric's ``<metric>_seed_sd`` (:mod:`dso_cli.report.seeds`); ``run`` then names its runs joined by
    ``+``."""
    frames = []
    for group in seed_groups(run_dirs):
        runs = [_split_rows(run_dir, split) for run_dir in group]
        frames.append(mean_over_seeds(runs).assign(run=group_label(group)))
    data = pd.concat(frames, ignore_index=True)
    several = data["run"].nunique() > 1
    data["curve"] = data["method"] + (" (" + data["run"] + ")" if several else "")
    member = data["benchmark"]
    if "attribute" in data and data["attribute"].nunique() > 1:  # a mixture over attributes
        member = member + " " + data["attribute"].fillna("")
    if member.nunique() > 1:  # a mixture's members: one curve each
        data["curve"] = data["curve"] + " [" + member + "]"
    return data.sort_values(["curve", "alpha"]).reset_index(drop=True)


def _split_rows(run_dir: Path, split: str) -> pd.DataFrame:
    path = Path(run_dir) / "sweep.csv"
    if not path.is_file():
        raise DsoError(f"{run_dir} has no sweep.csv; run `dso sweep run_dir={run_dir}` first")
    frame = pd.read_csv(path)
    frame = frame[frame["split"] == split]
    if frame.empty:
        raise DsoError(f"{path} has no rows for split {split!r}")
    return frame


def base_point(data: pd.DataFrame) -> tuple[float, float] | None:
    """(POB, unambiguous accuracy) of the unsteered model: the ω = 0 rows (identical across methods)."""
    base = data[data["alpha"] == 0.0]
    if base.empty:
        return None
    return float(base["pob"].mean()), float(base["unamb_acc"].mean())


def pareto_points(data: pd.DataFrame) -> pd.DataFrame:
    points = data.reindex(columns=sorted(set(data.columns) | set(POINT_COLUMNS)))
    points["on_front"] = pareto_mask(points["pob"].tolist(), points["unamb_acc"].tolist())
    return points[POINT_COLUMNS]


def curve_summary(data: pd.DataFrame) -> pd.DataFrame:
    """Per curve: hypervolume against the base POB, POB at the largest ω relative to base, the
    per-decision metrics there (``item_bias``, ``order_dep``, ``first_option_rate``), what the largest ω
    costs on held-out text (its perplexity relative to the base model's, and its KL), whether POB falls
    monotonically, and whether the curve is *fair by position* (:func:`fair_by_position`)."""
    base = base_point(data)
    rows = []
    for curve, group in data.groupby("curve", sort=True):
        group = group.sort_values("alpha")
        top = group.iloc[-1]
        rows.append(
            {
                "curve": curve,
                "max_alpha": float(top["alpha"]),
                "pob_at_max": float(top["pob"]),
                "pob_ratio_to_base": float(top["pob"] / base[0]) if base and base[0] > 0 else float("nan"),
                "item_bias_ratio_to_base": at_max_over_base(group, "item_bias"),
                "order_dep_at_max": float(top.get("order_dep", float("nan"))),
                "first_option_rate_at_max": float(top.get("first_option_rate", float("nan"))),
                "unamb_acc_change": float(top["unamb_acc"] - base[1]) if base else float("nan"),
                "ppl_ratio_at_max": ppl_ratio(group),
                "text_kl_at_max": float(top.get("text_kl", float("nan"))),
                "monotone": is_monotone(group["pob"].tolist(), group["pob_se"].fillna(0).tolist()),
                "fair_by_position": fair_by_position(group),
                "not_reading": not_reading(group),
                "hypervolume": hypervolume(group["pob"].tolist(), group["unamb_acc"].tolist(), base[0])
                if base
                else float("nan"),
            }
        )
    return pd.DataFrame(rows)


def curve_ends(group: pd.DataFrame) -> tuple[pd.Series, pd.Series] | None:
    """A curve's ω = 0 row and its largest-strength row (None without an ω = 0 row)."""
    group = group.sort_values("alpha")
    base = group[group["alpha"] == 0.0]
    return (base.iloc[0], group.iloc[-1]) if len(base) else None


def at_max_over_base(group: pd.DataFrame, column: str) -> float:
    """``column`` at a curve's largest strength over its value at ω = 0 (NaN where either is missing)."""
    ends = curve_ends(group) if column in group else None
    if ends is None:
        return float("nan")
    base, top = (float(row[column]) for row in ends)
    return top / base if base > 0 else float("nan")


def rose(group: pd.DataFrame, column: str) -> bool:
    """``column`` at the largest strength is above its ω = 0 value by more than 2 standard errors (the
    larger of the two ``<column>_se``; no SE column: any rise)."""
    ends = curve_ends(group) if column in group else None
    if ends is None:
        return False
    base, top = ends
    if pd.isna(base[column]) or pd.isna(top[column]):
        return False
    se_column = f"{column}_se"
    se = max(float(base.get(se_column, 0.0) or 0.0), float(top.get(se_column, 0.0) or 0.0))
    return bool(top[column] > base[column] + 2 * (0.0 if se != se else se))


def fair_by_position(group: pd.DataFrame) -> bool:
    """POB falls from ω = 0 to the largest strength while ``item_bias`` or ``order_dep`` rises (beyond 2
    SEs): the decisions stopped following gender by following a new arbitrary rule (typically: whoever
    is named first), not by becoming 50/50."""
    ends = curve_ends(group)
    if ends is None:
        return False
    falls = float(ends[1]["pob"]) < float(ends[0]["pob"])
    return falls and (rose(group, "item_bias") or rose(group, "order_dep"))


def not_reading(group: pd.DataFrame) -> bool:
    """At a curve's largest strength, unambiguous accuracy is no better than a coin between the people
    (``unamb_acc_chance``, .5 with two) within 2 standard errors: a policy that is 50/50 where the
    prompt is silent *and* where it says who is not fair, it ignores the evidence."""
    top = group.sort_values("alpha").iloc[-1]
    acc = float(top.get("unamb_acc", float("nan")))
    if acc != acc:
        return False
    chance = top.get("unamb_acc_chance", 0.5)
    chance = 0.5 if pd.isna(chance) else float(chance)
    se = top.get("unamb_acc_se", 0.0)
    se = 0.0 if pd.isna(se) else float(se)
    return acc <= chance + 2 * se


def verdicts(summary: pd.DataFrame) -> list[str]:
    """One line per curve for the printed summary: POB, item_bias and order_dep at the largest strength,
    and the warning a curve that is fair by position must carry."""
    lines = []
    for row in summary.to_dict("records"):
        line = (
            f"{row['curve']}: at {row['max_alpha']:g}, POB {row['pob_ratio_to_base']:.2f}x base, item_bias "
            f"{row['item_bias_ratio_to_base']:.2f}x base, order_dep {row['order_dep_at_max']:.3f}, first option "
            f"chosen {row['first_option_rate_at_max']:.0%}, ppl {row['ppl_ratio_at_max']:.2f}x"
        )
        if row["fair_by_position"]:
            line += (
                " -- FAIR BY POSITION: POB fell while item_bias or order_dep rose; the decisions follow the "
                "option order, not 50/50"
            )
        if row.get("not_reading"):
            line += " -- NOT READING: unambiguous accuracy at chance; the decisions ignore who the prompt says it is"
        lines.append(line)
    return lines


def ppl_ratio(group: pd.DataFrame) -> float:
    """Held-out text perplexity at a curve's largest strength over the base model's (ω = 0)."""
    return at_max_over_base(group, "text_ppl")


OPERATING_COLUMNS = [
    "method", "alpha", "pob", "pob_se", "item_bias", "item_bias_se", "first_option_rate", "order_dep", "unamb_acc",
    "unamb_acc_se", "unamb_acc_pro", "unamb_acc_anti", "unamb_acc_first", "unamb_acc_second", "kl", "text_kl",
    "text_ppl", "pob_change", "select_pob", "select_unamb_acc",
]  # fmt: skip


PER_DECISION = ("item_bias", "item_bias_se", "first_option_rate", "order_dep")


EVIDENCE = ("unamb_acc_pro", "unamb_acc_anti", "unamb_acc_first", "unamb_acc_second")
"""Unambiguous accuracy by whether the correct person is stereotyped and where it is listed."""


def operating_points(
    data: pd.DataFrame, select_split: str, report_split: str, max_acc_drop: float = 0.05
) -> pd.DataFrame:
    """Per method, the strength chosen on ``select_split`` and its metrics on ``report_split``.

    The choice: the lowest POB among the method's strengths whose unambiguous accuracy on
    ``select_split`` is at most ``max_acc_drop`` below the base model's (ω = 0 always qualifies; ties go
    to the smaller strength). Choosing on one split and reporting on another keeps the reported
    numbers free of selection bias.
    """
    rows = []
    for method, group in data.groupby("method", sort=False):
        select = group[group["split"] == select_split].sort_values("alpha")
        report = group[group["split"] == report_split].set_index("alpha")
        if select.empty or report.empty:
            continue
        base = select[select["alpha"] == 0.0]
        floor = float(base["unamb_acc"].iloc[0]) - max_acc_drop if len(base) else -float("inf")
        eligible = select[(select["unamb_acc"] >= floor) | (select["alpha"] == 0.0)]
        best = eligible.loc[eligible["pob"].idxmin()] if len(eligible) else select.iloc[0]
        strength = float(best["alpha"])
        if strength not in report.index:
            continue
        at = report.loc[strength]
        base_pob = float(report.loc[0.0, "pob"]) if 0.0 in report.index else float("nan")
        rows.append(
            {
                "method": method,
                "alpha": strength,
                "pob": float(at["pob"]),
                "pob_se": float(at["pob_se"]),
                **{k: float(at.get(k, float("nan"))) for k in PER_DECISION},
                "unamb_acc": float(at["unamb_acc"]),
                "unamb_acc_se": float(at.get("unamb_acc_se", float("nan"))),
                **{k: float(at.get(k, float("nan"))) for k in EVIDENCE},
                "kl": float(at["kl"]),
                "text_kl": float(at.get("text_kl", float("nan"))),
                "text_ppl": float(at.get("text_ppl", float("nan"))),
                "pob_change": float(at["pob"]) - base_pob,
                "select_pob": float(best["pob"]),
                "select_unamb_acc": float(best["unamb_acc"]),
            }
        )
    return pd.DataFrame(rows, columns=OPERATING_COLUMNS)
