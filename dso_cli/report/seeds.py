"""Runs that differ only in their seed are one experiment: one curve, the mean over seeds, with the seed
spread beside the bootstrap SE.

A paper reports mean ± SD over seeds; the bootstrap SE of one run says how sure that run's number is
over the benchmark's items, not how much the training seed moves it. Both columns stay: ``pob_se`` is
the mean of the runs' bootstrap SEs and ``pob_seed_sd`` the standard deviation of ``pob`` over the
seeds (NaN with one seed), with ``n_seeds`` the runs behind each point.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

from dso_cli.pipeline.runs import TRAIN_CONFIG, result_settings

SEED_SETTINGS = ("seed",)
"""The settings a seed group may differ in."""

SEED_SD_METRICS = (
    "pob", "item_bias", "first_option_rate", "order_dep", "stereotype_gap", "unamb_acc", "unamb_acc_hard",
    "unamb_acc_pro", "unamb_acc_anti", "unamb_acc_first", "unamb_acc_second", "refusal_rate", "kl", "text_kl",
    "text_ppl", "prompt_kl", "assoc_gap", "assoc_r", "pronoun_control_acc",
)  # fmt: skip
"""The metrics whose spread over seeds a grouped curve reports (``<metric>_seed_sd``)."""

POINT_KEYS = ("method", "benchmark", "attribute", "split", "alpha")
"""What identifies one point of a curve across the seeds of a group."""


def experiment_key(run_dir: Path) -> str:
    """The run's result settings without its seed (:data:`SEED_SETTINGS`), as text; a run without a
    readable ``config.yaml`` is an experiment of its own."""
    path = Path(run_dir) / TRAIN_CONFIG
    try:
        settings = result_settings(OmegaConf.load(path))
    except Exception:  # no config (a sweep copied elsewhere) or an unreadable one: never grouped
        return f"run:{Path(run_dir).resolve()}"
    kept = {k: v for k, v in settings.items() if k not in SEED_SETTINGS}
    return json.dumps(kept, sort_keys=True, default=str)


def seed_groups(run_dirs: Sequence[Path]) -> list[list[Path]]:
    """The runs grouped by :func:`experiment_key`, groups in the order of their first run."""
    groups: dict[str, list[Path]] = {}
    for run in run_dirs:
        groups.setdefault(experiment_key(run), []).append(Path(run))
    return list(groups.values())


def group_label(group: Sequence[Path]) -> str:
    """A curve's run label: the run's name, or the names of a seed group's runs joined by ``+``."""
    return "+".join(run.name for run in group)


def mean_over_seeds(frames: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """One frame of a seed group's runs (one ``sweep.csv`` each): per point, the mean of every numeric
    column, ``n_seeds`` and ``<metric>_seed_sd`` (ddof 1) for :data:`SEED_SD_METRICS`. One frame comes
    back with ``n_seeds`` = 1 and the SDs NaN."""
    data = pd.concat([f.assign(_seed_run=i) for i, f in enumerate(frames)], ignore_index=True)
    keys = [k for k in POINT_KEYS if k in data]
    data[keys] = data[keys].fillna("")  # a missing attribute still groups
    numeric = [c for c in data.select_dtypes("number").columns if c not in keys and c != "_seed_run"]
    other = [c for c in data.columns if c not in keys and c not in numeric and c != "_seed_run"]
    grouped = data.groupby(keys, sort=False, dropna=False)
    out = grouped[numeric].mean()
    out["n_seeds"] = grouped["_seed_run"].nunique()
    for metric in SEED_SD_METRICS:
        if metric in data:
            out[f"{metric}_seed_sd"] = grouped[metric].std(ddof=1)
    if other:
        out = out.join(grouped[other].first())
    out = out.reset_index()
    if "attribute" in out:  # back to missing where it was
        out["attribute"] = out["attribute"].replace("", float("nan"))
    return out
