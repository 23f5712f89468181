"""Per-group selection rates in a report: on ambiguous decisions, how often each group is chosen, from
the ``sweep_groups.csv`` / ``eval_groups.csv`` that ``dso sweep`` and ``dso eval`` write. POB says how
unequal the groups are; this says which group gains and which loses, at the base model and at each
method's largest strength."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt
import pandas as pd

from dso_cli.io import atomic_write
from dso_cli.pipeline.results import markdown_table

FILES = ("sweep_groups.csv", "eval_groups.csv")


def load_group_rates(run_dirs: Sequence[Path], split: str) -> pd.DataFrame:
    """Every run's group rows of ``split`` (empty when no run has any), each run's smallest strength
    (the base model) and each method's largest, labelled ``member`` (benchmark and attribute) and
    ``setting`` (method and strength)."""
    frames = []
    for run_dir in run_dirs:
        for name in FILES:
            path = Path(run_dir) / name
            if path.is_file():
                frame = pd.read_csv(path, keep_default_na=False, na_values=[""])
                frames.append(frame[frame["split"] == split].assign(run=Path(run_dir).name, source=name))
    if not frames:
        return pd.DataFrame()
    data = pd.concat(frames, ignore_index=True).drop_duplicates(
        subset=["run", "method", "benchmark", "attribute", "alpha", "group"]
    )  # a sweep and an eval of the same set: the sweep's rows
    if data.empty:
        return data
    ends = data.groupby(["run", "method"])["alpha"].transform("max")
    data = data[(data["alpha"] == 0.0) | (data["alpha"] == ends)].copy()
    several = data["run"].nunique() > 1
    data["member"] = data["benchmark"] + " · " + data["attribute"].fillna("")
    data["setting"] = data.apply(
        lambda r: (
            "base model"
            if r["alpha"] == 0.0
            else f"{r['method']} {r['alpha']:g}" + (f" ({r['run']})" if several else "")
        ),
        axis=1,
    )
    return data.drop_duplicates(subset=["member", "setting", "group"])


def group_rates_table(data: pd.DataFrame) -> str:
    """One row per (member, group), one column per setting: the selection rate."""
    wide = data.pivot_table(index=["member", "group"], columns="setting", values="selection_rate", sort=False)
    records = wide.reset_index().to_dict("records")
    return markdown_table(records, ["member", "group", *wide.columns])


def group_rates_plot(data: pd.DataFrame, path: Path) -> Path:
    """One panel per (benchmark, attribute): a bar per group and setting, with its standard error."""
    members = list(dict.fromkeys(data["member"]))
    fig, axes = plt.subplots(len(members), 1, figsize=(max(6.0, 0.9 * data["group"].nunique() + 3), 3.6 * len(members)),
                             dpi=120, squeeze=False)  # fmt: skip
    for ax, member in zip(axes[:, 0], members, strict=True):
        part = data[data["member"] == member]
        groups = sorted(part["group"].unique(), key=lambda g: (g == "unknown", g))
        settings = list(dict.fromkeys(part["setting"]))
        width = 0.8 / len(settings)
        for k, setting in enumerate(settings):
            rows = part[part["setting"] == setting].set_index("group").reindex(groups)
            x = [i + (k - (len(settings) - 1) / 2) * width for i in range(len(groups))]
            ax.bar(x, rows["selection_rate"], width, yerr=rows["selection_rate_se"], capsize=2, label=setting)
        ax.set_xticks(range(len(groups)), groups, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("selection rate (ambiguous items)")
        ax.set_title(f"{member}: equal person-group bars = fair", fontsize=9)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return path
