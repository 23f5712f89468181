"""Neutral text for the capability cost of steering: KL(steered ‖ base) per token and perplexity.

The passages are the Lee news corpus (Australian Broadcasting Corporation news articles; Lee,
Pincombe & Welsh 2005) that ships as test data inside the ``gensim`` wheel: general-domain, edited
English prose with nothing to do with the decision prompts. It comes as two disjoint files, and
`dso` keeps them apart by construction:

- ``lee_background.cor`` (300 articles) is **training** text: DSO's neutral-text KL term draws from
  it (``part="train"``), except every tenth article, which is kept for validation (``part="val"``:
  early stopping on the KL budget);
- ``lee.cor`` (50 other articles) is **held-out** text (``part="heldout"``): what ``dso sweep``,
  ``dso compare`` and ``capability=neutral_text`` measure ``text_kl`` and ``text_ppl`` on.

Any local text file (one passage per line) can replace either.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dso_cli.benchmarks.assets import wheel_file
from dso_cli.config.fields import make_options
from dso_cli.config.group_schemas import NeutralTextOptions
from dso_cli.errors import DsoError

LEE_TRAIN = "test/test_data/lee_background.cor"
LEE_HELDOUT = "test/test_data/lee.cor"
PARTS = ("heldout", "train", "val")
VAL_EVERY = 10  # every tenth training passage is validation text


@dataclass(frozen=True)
class TextCorpus:
    """Passages to score token by token (not decision items)."""

    name: str
    passages: list[str]
    max_tokens: int


def read_passages(path: str | None, part: str = "heldout", *, what: str = "neutral_text") -> list[str]:
    """Non-empty lines of ``path`` (default: the Lee file of ``part``); ``part`` train/val split the
    training file (every :data:`VAL_EVERY`-th passage is val), whichever file it is."""
    if part not in PARTS:
        raise DsoError(f"{what}: part must be one of {', '.join(PARTS)}, not {part!r}")
    if path:
        file = Path(path).expanduser()
    else:
        file = wheel_file("gensim", LEE_HELDOUT if part == "heldout" else LEE_TRAIN, pip_name="gensim", what=what)
    if not file.is_file():
        raise DsoError(f"{what}: {file} does not exist")
    lines = file.read_text(encoding="utf-8", errors="replace").splitlines()
    passages = list(dict.fromkeys(line.strip() for line in lines if line.strip()))  # a repeated line once
    if not passages:
        raise DsoError(f"{what}: {file} holds no text")
    if part == "train":
        return [p for i, p in enumerate(passages) if i % VAL_EVERY != VAL_EVERY - 1]
    if part == "val":
        return [p for i, p in enumerate(passages) if i % VAL_EVERY == VAL_EVERY - 1]
    return passages


def build(*, name: str = "neutral_text", part: str = "heldout", **options: Any) -> TextCorpus:
    """The first ``max_passages`` passages of ``part`` (default: the held-out Lee articles)."""
    opts = make_options(NeutralTextOptions, options, "capability")
    if opts.max_tokens < 2:
        raise DsoError(f"{name}: max_tokens must be at least 2")
    passages = read_passages(opts.path, part, what=name)
    return TextCorpus(name, passages[: opts.max_passages] if opts.max_passages else passages, int(opts.max_tokens))


def overlap(first: Sequence[str], second: Sequence[str]) -> int:
    """How many passages two corpora share (training text must never be measuring text)."""
    return len(set(first) & set(second))
