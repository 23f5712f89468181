"""What a fit or an evaluation reads besides the benchmark: the held-out text of the capability cost,
and the activation store closed-form fits record into."""

from __future__ import annotations

from collections.abc import Sequence

from omegaconf import DictConfig, OmegaConf

from dso_cli.benchmarks import neutral_text
from dso_cli.benchmarks.neutral_text import TextCorpus
from dso_cli.errors import DsoError
from dso_cli.scoring import OptionScorer
from dso_cli.steering.activation_cache import ActivationCache
from dso_cli.steering.activations import ActivationStore


def heldout_corpus(cfg: DictConfig) -> TextCorpus:
    """The held-out neutral text of ``cfg.heldout_text``; refused when the run trained on any of it."""
    text = cfg.heldout_text
    corpus = neutral_text.build(path=text.path, max_passages=text.max_passages, max_tokens=text.max_tokens,
                                name="heldout_text")  # fmt: skip
    if int(OmegaConf.select(cfg, "optimizer.kl_text_passages", default=0) or 0) > 0:
        trained = neutral_text.read_passages(OmegaConf.select(cfg, "optimizer.kl_text_path"), "train",
                                             what="optimizer.kl_text_path")  # fmt: skip
        shared = neutral_text.overlap(trained, corpus.passages)
        if shared:
            raise DsoError(
                f"heldout_text shares {shared} passages with the run's training text (optimizer.kl_text_path): "
                "text_kl would not be held out; pass another heldout_text.path"
            )
    return corpus


def store_from_config(cfg: DictConfig, scorer: OptionScorer, train_items: Sequence[dict]) -> ActivationStore:
    """The store baseline fits of ``dso train``/``dso compare`` record into, backed by the activation
    cache ``extract.cache`` when it is set."""
    root = cfg.get("extract", {}).get("cache")
    cache = ActivationCache(root, dtype=cfg.extract.dtype, shard_items=cfg.extract.shard_items) if root else None
    return ActivationStore(scorer, train_items, cache=cache, benchmark=str(cfg.bias_benchmark.name), split="train")
