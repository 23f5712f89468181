"""What a fit or an evaluation reads besides the benchmark: the held-out text of the capability cost,
and the activation store closed-form fits record into."""

from __future__ import annotations

from collections.abc import Sequence

from dso_cli.benchmarks import neutral_text
from dso_cli.benchmarks.neutral_text import TextCorpus
from dso_cli.errors import DsoError
from dso_cli.pipeline.specs import CacheSettings, HeldoutText
from dso_cli.scoring import OptionScorer
from dso_cli.steering.activation_cache import ActivationCache
from dso_cli.steering.activations import ActivationStore


def heldout_corpus(text: HeldoutText) -> TextCorpus:
    """The held-out neutral text ``text`` names; refused when the run trained on any of it."""
    corpus = neutral_text.build(path=text.path, max_passages=text.max_passages, max_tokens=text.max_tokens,
                                name="heldout_text")  # fmt: skip
    shared = neutral_text.overlap(list(text.trained_on), corpus.passages) if text.trained_on else 0
    if shared:
        raise DsoError(
            f"heldout_text shares {shared} passages with the run's training text (optimizer.kl_text_path): "
            "text_kl would not be held out; pass another heldout_text.path"
        )
    return corpus


def activation_store(
    scorer: OptionScorer, train_items: Sequence[dict], benchmark: str, cache: CacheSettings | None = None
) -> ActivationStore:
    """The store baseline fits record into, backed by the activation cache ``cache`` names (if any)."""
    backing = None
    if cache is not None and cache.root:
        backing = ActivationCache(cache.root, dtype=cache.dtype, shard_items=cache.shard_items)
    return ActivationStore(scorer, train_items, cache=backing, benchmark=benchmark, split="train")
