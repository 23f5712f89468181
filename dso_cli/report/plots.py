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
    """Left: POB against unambiguous accuracy. Right (when the sweep measured it): POB against the
    per-token KL on held-out neutral text, what the fairness costs the model off task."""
    has_text = "text_kl" in data and data["text_kl"].notna().any()
    fig, axes = plt.subplots(1, 2 if has_text else 1, figsize=(12.0 if has_text else 6.4, 4.8), dpi=120, squeeze=False)
    panels = [("unamb_acc", "Unambiguous accuracy (soft)")]
    if has_text:
        panels.append(("text_kl", "KL(steered ‖ base) per token, held-out text (lower is better)"))
    base = base_point(data)
    for ax, (column, label) in zip(axes[0], panels, strict=True):
        for curve, group in data.groupby("curve", sort=True):
            group = group.sort_values("alpha")
            ax.errorbar(group["pob"], group[column], xerr=group["pob_se"], marker="o", capsize=2, label=curve)
            for _, row in group[group["alpha"] > 0].iterrows():  # strength 0 is the base model's star
                knob = knob_of(row["method"])
                ax.annotate(f"{knob}={row['alpha']:g}", (row["pob"], row[column]), textcoords="offset points",
                            xytext=(4, 4), fontsize=7)  # fmt: skip
        if base is not None:
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
