"""Plots of where the signal lives (probe accuracy per layer) and where a method steers (PNG files)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from dso_cli.io import atomic_write
from dso_cli.report.where import layer_order


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return path


def signal_plot(frame: pd.DataFrame, path: Path, title: str) -> Path:
    """Probe accuracy per layer (option's group; stereotypical or not) with chance levels, and the CAA
    direction's norm on a second axis."""
    fig, ax = plt.subplots(figsize=(7.2, 4.2), dpi=120)
    layers = frame["layer"]
    ax.plot(layers, frame["group_probe"], marker="o", label="probe: group of the option (gender)")
    ax.plot(layers, frame["stereotype_probe"], marker="s", label="probe: stereotypical completion")
    ax.plot(layers, frame["group_chance"], color="grey", linestyle=":", label="chance")
    ax.set_ylim(0.4, 1.02)
    ax.set_xlabel("decoder layer")
    ax.set_ylabel("held-out accuracy")
    ax.grid(alpha=0.3)
    norm_ax = ax.twinx()
    norm_ax.plot(layers, frame["caa_norm"], color="tab:red", alpha=0.6, linestyle="--", label="‖CAA direction‖")
    norm_ax.set_ylabel("‖mean anti − mean pro‖", color="tab:red")
    lines = ax.get_legend_handles_labels()[0] + norm_ax.get_legend_handles_labels()[0]
    labels = ax.get_legend_handles_labels()[1] + norm_ax.get_legend_handles_labels()[1]
    ax.legend(lines, labels, fontsize=7, loc="lower right")
    ax.set_title(title)
    return _save(fig, path)


def affine_heatmap(modules: pd.DataFrame, path: Path, title: str) -> Path:
    """|a| + |b| summed per layer (columns) and norm module (rows); modules outside the layers get a
    last column of their own."""
    layers = layer_order(modules["layer"].tolist())
    kinds = list(dict.fromkeys(modules["kind"]))
    grid = np.full((len(kinds), len(layers)), np.nan)
    for _, row in modules.iterrows():
        column = layers.index(None if pd.isna(row["layer"]) else int(row["layer"]))
        grid[kinds.index(row["kind"]), column] = row["mass"]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.28 * len(layers) + 3), 0.5 * len(kinds) + 2.2), dpi=120)
    image = ax.imshow(grid, aspect="auto", cmap="viridis")
    ax.set_yticks(range(len(kinds)), kinds, fontsize=8)
    ax.set_xticks(range(len(layers)), ["out" if x is None else str(x) for x in layers], fontsize=7)
    ax.set_xlabel("decoder layer")
    fig.colorbar(image, ax=ax, label="Σ |a| + |b|")
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def vector_plot(vectors: pd.DataFrame, path: Path, title: str) -> Path:
    """CAA: the norm of the steering vector at each steered layer."""
    fig, ax = plt.subplots(figsize=(6.4, 3.2), dpi=120)
    ax.bar([str(x) for x in vectors["layer"]], vectors["norm"])
    ax.set_xlabel("decoder layer")
    ax.set_ylabel("‖v‖")
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def head_heatmap(heads: pd.DataFrame, path: Path, title: str) -> Path:
    """ITI: the probe accuracy of each steered head by layer (0 = not steered)."""
    grid = heads.pivot_table(index="head", columns="layer", values="probe_accuracy", aggfunc="max").fillna(0.0)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.28 * grid.shape[1] + 3), 0.25 * grid.shape[0] + 2.2), dpi=120)
    image = ax.imshow(grid.to_numpy(), aspect="auto", cmap="magma")
    ax.set_xticks(range(grid.shape[1]), [str(c) for c in grid.columns], fontsize=7)
    ax.set_yticks(range(grid.shape[0]), [str(i) for i in grid.index], fontsize=7)
    ax.set_xlabel("decoder layer")
    ax.set_ylabel("head")
    fig.colorbar(image, ax=ax, label="probe accuracy")
    ax.set_title(title, fontsize=10)
    return _save(fig, path)
