"""How an :class:`~dso_cli.scoring.OptionScorer` renders and scores items: one typed value instead
of a long keyword list, so a verb builds it once from the ``scoring`` config section and a library
user overrides only what they mean to."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from dso_cli.config.fields import setting
from dso_cli.config.schema import ScoringSchema


@dataclass
class ScoringOptions(ScoringSchema):
    """Options of one scorer: the ``scoring`` section's keys (:class:`~dso_cli.config.schema.ScoringSchema`
    holds them with their defaults and help) plus the model's chat-template arguments."""

    chat_template_kwargs: Mapping[str, Any] = setting({}, "extra chat-template arguments (model.chat_template_kwargs)")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> ScoringOptions:
        """The options in ``values`` (a config section); an unknown key is refused by name."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise TypeError(f"unknown scoring option(s) {unknown}; known: {sorted(known)}")
        return cls(**dict(values))
