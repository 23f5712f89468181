"""Bias benchmarks: each builder returns a ``datasets.DatasetDict`` of decision items (one schema)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import datasets
from hydra.errors import InstantiationException

from dso_cli.errors import DsoError
from dso_cli.targets import instantiate_checked


def instantiate_builder(cfg: Mapping[str, Any]) -> Any:
    """``instantiate`` a builder config; a :class:`DsoError` inside it surfaces as itself (one line)."""
    if "_target_" not in cfg:
        raise DsoError(f"benchmark {cfg.get('name')!r} has no _target_ builder")
    try:
        return instantiate_checked(cfg, "bias_benchmark", _convert_="all")
    except InstantiationException as exc:
        cause = exc.__cause__
        while cause is not None and not isinstance(cause, DsoError):
            cause = cause.__cause__
        if cause is not None:
            raise cause from None
        raise


def build_benchmark(cfg: Mapping[str, Any], model: Mapping[str, Any] | None = None) -> datasets.DatasetDict:
    """Instantiate a ``bias_benchmark`` config (its ``_target_`` builds the splits).

    A benchmark with ``modality: auto`` is built with images for a vision-language ``model`` (its
    ``model`` config section) and as text otherwise.
    """
    if cfg.get("modality") == "auto":
        from omegaconf import OmegaConf

        from dso_cli.models.loading import is_multimodal

        cfg = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)
        cfg["modality"] = "image" if model is not None and is_multimodal(model) else "text"
    splits = instantiate_builder(cfg)
    if not isinstance(splits, datasets.DatasetDict) or "train" not in splits:
        raise DsoError(f"bias_benchmark {cfg.get('name')!r} did not build a DatasetDict with a train split")
    return splits


def split_items(splits: datasets.DatasetDict, name: str) -> list[dict[str, Any]]:
    if name not in splits:
        raise DsoError(f"this benchmark has no split {name!r} (has: {', '.join(splits)})")
    return splits[name].to_list()
