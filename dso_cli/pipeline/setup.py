"""A verb's start: seeds, and the model and scorer its config describes."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

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
