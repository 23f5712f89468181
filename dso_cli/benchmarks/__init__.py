"""Bias benchmarks: each builder returns a ``datasets.DatasetDict`` of decision items (one schema)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import datasets
from hydra.utils import instantiate

from dso_cli.errors import DsoError


def build_benchmark(cfg: Mapping[str, Any]) -> datasets.DatasetDict:
    """Instantiate a ``bias_benchmark`` config (its ``_target_`` builds the splits)."""
    if "_target_" not in cfg:
        raise DsoError(f"bias_benchmark {cfg.get('name')!r} has no _target_ builder")
    splits = instantiate(cfg, _convert_="all")
    if not isinstance(splits, datasets.DatasetDict) or "train" not in splits:
        raise DsoError(f"bias_benchmark {cfg.get('name')!r} did not build a DatasetDict with a train split")
    return splits


def split_items(splits: datasets.DatasetDict, name: str) -> list[dict[str, Any]]:
    if name not in splits:
        raise DsoError(f"this benchmark has no split {name!r} (has: {', '.join(splits)})")
    return splits[name].to_list()
