"""Pieces every verb shares: seeding, model + scorer from config, Markdown tables, result CSVs."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from dso_cli.io import atomic_write, locked
from dso_cli.models.loading import LoadedModel, load_model
from dso_cli.scoring import OptionScorer


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_from_config(cfg: DictConfig) -> tuple[LoadedModel, OptionScorer]:
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    assert isinstance(model_cfg, dict)
    loaded = load_model(**model_cfg)
    return loaded, scorer_from_config(cfg, loaded)


def scorer_from_config(cfg: DictConfig, loaded: LoadedModel, **scoring_overrides: Any) -> OptionScorer:
    """A scorer for ``loaded`` with the ``scoring`` section of ``cfg`` (keys in ``scoring_overrides``
    replaced) and the model's chat-template arguments; a new scorer starts with an empty token cache."""
    template_kwargs = cfg.model.get("chat_template_kwargs")
    template_kwargs = OmegaConf.to_container(template_kwargs, resolve=True) if template_kwargs else {}
    scoring = OmegaConf.to_container(cfg.scoring, resolve=True)
    assert isinstance(scoring, dict) and isinstance(template_kwargs, dict)
    return OptionScorer(
        loaded.model,
        loaded.tokenizer,
        processor=loaded.processor,
        chat_template_kwargs=template_kwargs,
        **(scoring | scoring_overrides),
    )


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], digits: int = 3) -> str:
    """A GitHub-flavoured Markdown table of ``columns`` (floats rounded to ``digits``)."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return "nan" if value != value else f"{value:.{digits}f}"
        return str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def merge_into_csv(path: Path, new: pd.DataFrame, key: Sequence[str], *, sort: bool = False) -> None:
    """Rewrite ``path`` atomically, under its lock: ``new`` rows replace the rows with the same ``key``,
    the other rows (other splits, benchmarks or strengths, perhaps written meanwhile by another verb)
    are kept. The file is re-read under the lock, never merged against a copy read earlier."""
    key = list(key)
    with locked(path):
        current = pd.read_csv(path) if path.is_file() else pd.DataFrame(columns=new.columns)
        current = current.reindex(columns=new.columns)
        kept = current.merge(new[key], on=key, how="left", indicator=True)
        kept = kept[kept["_merge"] == "left_only"].drop(columns="_merge")
        frame = pd.concat([kept, new], ignore_index=True) if len(kept) else new
        if sort:
            frame = frame.sort_values(key, kind="stable")
        atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False))
