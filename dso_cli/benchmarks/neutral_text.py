"""Neutral text for the capability cost of steering: KL(steered ‖ base) per token and perplexity.

The default passages are the Lee news corpus (300 Australian Broadcasting Corporation news articles,
Lee, Pincombe & Welsh 2005) that ships as test data inside the ``gensim`` wheel: general-domain,
edited English prose with nothing to do with the occupation prompts. Any local text file (one
passage per line) can replace it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dso_cli.benchmarks.assets import wheel_file
from dso_cli.errors import DsoError

LEE_CORPUS = "test/test_data/lee_background.cor"


@dataclass(frozen=True)
class TextCorpus:
    """Passages to score token by token (not decision items)."""

    name: str
    passages: list[str]
    max_tokens: int


def build(
    path: str | None = None,
    max_passages: int | None = 48,
    max_tokens: int = 128,
    name: str = "neutral_text",
    **_: object,
) -> TextCorpus:
    """The first ``max_passages`` non-empty lines of ``path`` (default: the Lee corpus)."""
    file = Path(path).expanduser() if path else wheel_file("gensim", LEE_CORPUS, pip_name="gensim", what=name)
    if not file.is_file():
        raise DsoError(f"{name}: {file} does not exist")
    lines = file.read_text(encoding="utf-8", errors="replace").splitlines()
    passages = [line.strip() for line in lines if line.strip()]
    if not passages:
        raise DsoError(f"{name}: {file} holds no text")
    if max_tokens < 2:
        raise DsoError(f"{name}: max_tokens must be at least 2")
    return TextCorpus(name, passages[:max_passages] if max_passages else passages, int(max_tokens))
