"""The Pareto plot: POB (lower is fairer) against unambiguous accuracy, one curve per method, strength labels."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt
import pandas as pd

from dso_cli.io import atomic_write
from dso_cli.report.tables import base_point


def pareto_plot(data: pd.DataFrame, path: Path, title: str) -> Path:
    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=120)
    for curve, group in data.groupby("curve", sort=True):
        group = group.sort_values("alpha")
        ax.errorbar(group["pob"], group["unamb_acc"], xerr=group["pob_se"], marker="o", capsize=2, label=curve)
        for _, row in group[group["alpha"] > 0].iterrows():  # strength 0 is the base model's star
            knob = "ω" if row["method"] == "dso" else "α"
            ax.annotate(f"{knob}={row['alpha']:g}", (row["pob"], row["unamb_acc"]), textcoords="offset points",
                        xytext=(4, 4), fontsize=7)  # fmt: skip
    base = base_point(data)
    if base is not None:
        ax.scatter([base[0]], [base[1]], marker="*", s=220, color="black", zorder=5, label="base model")
    ax.set_xlabel("Per-Occupation Bias (lower is fairer)")
    ax.set_ylabel("Unambiguous accuracy (soft)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return path
