"""The Pareto plot: POB (lower is fairer) against unambiguous accuracy, one curve per method, strength labels;
a curve averaged over seeds carries its POB seed spread as a band."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt
import pandas as pd

from dso_cli.io import atomic_write
from dso_cli.report.tables import base_point, fair_by_position


def pareto_plot(data: pd.DataFrame, path: Path, title: str) -> Path:
    """POB against unambiguous accuracy; when the sweep measured them, POB against the per-token KL on
    held-out neutral text (what the fairness costs off task) and against ``item_bias`` (a curve that
    moves left and up is fair by position: POB falls while single decisions grow more one-sided; such
    curves are labelled so in the legend)."""
    panels = [("unamb_acc", "Unambiguous accuracy (soft)")]
    if "text_kl" in data and data["text_kl"].notna().any():
        panels.append(("text_kl", "KL(steered ‖ base) per token, held-out text (lower is better)"))
    if "item_bias" in data and data["item_bias"].notna().any():
        panels.append(("item_bias", "item_bias: mean |P(pro) − P(anti)| per decision (lower is fairer)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(6.0 * len(panels), 4.8), dpi=120, squeeze=False)
    base = base_point(data)
    for ax, (column, label) in zip(axes[0], panels, strict=True):
        for curve, group in data.groupby("curve", sort=True):
            group = group.sort_values("alpha")
            name = f"{curve} (fair by position)" if fair_by_position(group) else curve
            line = ax.errorbar(group["pob"], group[column], xerr=group["pob_se"], marker="o", capsize=2, label=name)
            spread = group["pob_seed_sd"] if "pob_seed_sd" in group else None
            if spread is not None and spread.notna().any():  # several seeds: their POB spread as a band
                sd = spread.fillna(0.0)
                ax.fill_betweenx(group[column], group["pob"] - sd, group["pob"] + sd, alpha=0.2,
                                 color=line.lines[0].get_color())  # fmt: skip
            for _, row in group[group["alpha"] > 0].iterrows():  # strength 0 is the base model's star
                knob = knob_of(row["method"])
                ax.annotate(f"{knob}={row['alpha']:g}", (row["pob"], row[column]), textcoords="offset points",
                            xytext=(4, 4), fontsize=7)  # fmt: skip
        if base is not None and column != "item_bias":
            y = base[1] if column == "unamb_acc" else 0.0
            ax.scatter([base[0]], [y], marker="*", s=220, color="black", zorder=5, label="base model")
        ax.set_xlabel("Per-Occupation Bias (lower is fairer)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return path


def knob_of(method: str) -> str:
    """The symbol of a method's strength (ω for the affine methods, α otherwise)."""
    from dso_cli.errors import DsoError
    from dso_cli.steering.method import method_class

    try:
        return method_class(method).knob
    except DsoError:  # a method of a package not imported here
        return "α"
