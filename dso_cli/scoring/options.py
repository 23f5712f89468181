"""How an :class:`~dso_cli.scoring.OptionScorer` renders and scores items: one typed value instead
of a long keyword list, so a verb builds it once from the ``scoring`` config section and a library
user overrides only what they mean to."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any


@dataclass(frozen=True)
class ScoringOptions:
    """Options of one scorer; the defaults are the shipped ``scoring`` section's."""

    chat_template: bool = True  # wrap prompts in the tokenizer's (or processor's) chat template
    system_prompt: str | None = None  # None: the chat template's own default
    chat_template_kwargs: Mapping[str, Any] = field(default_factory=dict)  # extra chat-template arguments
    length_normalize: bool = False  # mean instead of sum of an option's token log-probs
    batch_size: int = 16  # items per forward pass where prefix trees do not apply
    share_prompt: bool = True  # without trees: options continue from the prompt's key/value cache
    prefix_tree: bool = True  # pack text items into prefix trees (shared tokens computed once)
    tree_tokens: int | str = "auto"  # tokens per packed tree, or auto (by device)
    tree_attention_chunk: int | str = "auto"  # query chunk of tree attention, auto, or 0 (dense)
    cpu_linear: str = "auto"  # auto | onednn | stock: the CPU kernel of no-grad linear layers

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> ScoringOptions:
        """The options in ``values`` (a config section); an unknown key is refused by name."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise TypeError(f"unknown scoring option(s) {unknown}; known: {sorted(known)}")
        return cls(**dict(values))
