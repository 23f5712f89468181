"""A verb's start: seeds, and the model and scorer a :class:`ModelSetup` describes."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from dso_cli.models.loading import LoadedModel, load_model
from dso_cli.pipeline.specs import ModelSetup
from dso_cli.scoring import OptionScorer


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_scored_model(setup: ModelSetup) -> tuple[LoadedModel, OptionScorer]:
    """The model ``setup`` names (loaded right after seeding) and a scorer with its options."""
    seed_everything(setup.seed)
    loaded = load_model(**setup.model)
    return loaded, scorer_for(loaded, setup)


def scorer_for(loaded: LoadedModel, setup: ModelSetup, **overrides: Any) -> OptionScorer:
    """A scorer for ``loaded`` with ``setup``'s options (any of them replaced by ``overrides``); a new
    scorer starts with an empty token cache."""
    return OptionScorer(loaded.model, loaded.tokenizer, setup.scoring, processor=loaded.processor, **overrides)
