"""The text cost of steering: per-token full-vocabulary ``KL(steered ‖ base)`` and perplexity on
held-out neutral passages and on a benchmark's own prompts, per strength.

:func:`sequence_scores` measures the per-sequence values; the :class:`TextCost` and :class:`PromptKL`
metrics turn them into result columns.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from dso_cli.benchmarks.neutral_text import TextCorpus
from dso_cli.benchmarks.schema import DecisionItem
from dso_cli.evaluation.metric import Metric, Scores, SequenceScores
from dso_cli.metrics import mean_se
from dso_cli.scoring import OptionScorer
from dso_cli.steering.artifact import Artifact


def corpus_sequences(scorer: OptionScorer, corpus: TextCorpus) -> list[list[int]]:
    """Token ids of the corpus's passages, each cut to ``corpus.max_tokens``."""
    tokenizer = scorer.tokenizer
    return [tokenizer(p, truncation=True, max_length=corpus.max_tokens)["input_ids"] for p in corpus.passages]


def prompt_sequences(scorer: OptionScorer, items: Sequence[DecisionItem], max_items: int) -> list[list[int]]:
    """Token ids of up to ``max_items`` text items' rendered prompts (spread evenly over ``items``),
    for the full-vocabulary KL on the benchmark's own prompts; items with images are left out."""
    text = [item for item in items if not item.get("images")]
    if max_items <= 0 or not text:
        return []
    step = max(1, len(text) // max_items)
    return [list(scorer.encode(item).prompt_ids) for item in text[::step][:max_items]]


def sequence_scores(
    scorer: OptionScorer,
    artifact: Artifact | None,
    seqs: Sequence[Sequence[int]],
    strengths: Sequence[float],
    *,
    batch_size: int = 8,
    desc: str = "text",
) -> dict[float, SequenceScores]:
    """Per ω, each sequence's summed next-token NLL, token count and mean per-token
    ``KL(steered ‖ base)`` over the full vocabulary.

    Each batch runs the base model once and the steered model once per ω, so the base log-probs are
    never stored for the whole corpus. Sequences shorter than two tokens predict nothing and are left out.
    """
    seqs = sorted((list(s) for s in seqs if len(s) >= 2), key=len)
    nll = {a: [] for a in strengths}
    counts = {a: [] for a in strengths}
    kl = {a: [] for a in strengths}
    batches = [seqs[i : i + batch_size] for i in range(0, len(seqs), batch_size)]
    with torch.no_grad():
        for batch in tqdm(batches, desc=desc, unit="batch", leave=False):
            base, lengths = scorer.token_logprobs(batch)
            for strength in strengths:
                if strength == 0.0 or artifact is None:
                    logp = base
                else:
                    with artifact.steer(scorer, strength):
                        logp, _ = scorer.token_logprobs(batch)
                for row, n in enumerate(lengths.tolist()):
                    pred, target = logp[row, : n - 1], torch.tensor(batch[row][1:], device=logp.device)
                    token_nll = -pred.gather(1, target[:, None])[:, 0]
                    token_kl = (pred.exp() * (pred - base[row, : n - 1])).sum(-1)
                    nll[strength].append(float(token_nll.sum()))
                    counts[strength].append(n - 1)
                    kl[strength].append(float(token_kl.mean()))
    return {
        a: SequenceScores(np.array(nll[a], dtype=float), np.array(counts[a], dtype=float), np.array(kl[a], dtype=float))
        for a in strengths
    }


def summarize(scores: SequenceScores) -> dict[str, float]:
    """Mean per-sequence KL (± SE over sequences), perplexity (± delta-method SE) and the token count."""
    ppl, ppl_se = perplexity(scores.nll_sum, scores.n_tokens)
    return {
        "kl": float(scores.kl.mean()) if len(scores.kl) else math.nan,
        "kl_se": mean_se(scores.kl),
        "ppl": ppl,
        "ppl_se": ppl_se,
        "n_tokens": int(scores.n_tokens.sum()),
    }


def evaluate_sequences(
    scorer: OptionScorer,
    artifact: Artifact | None,
    seqs: Sequence[Sequence[int]],
    strengths: Sequence[float],
    *,
    batch_size: int = 8,
    on_row: Callable[[dict[str, Any]], None] = lambda row: None,
    desc: str = "text",
) -> list[dict[str, Any]]:
    """Per ω, the per-token full-vocabulary KL to the base and the perplexity of token sequences
    (``kl``, ``kl_se``: SE over sequences; ``ppl``, ``ppl_se``: delta-method SE; ``n_tokens``)."""
    measured = sequence_scores(scorer, artifact, seqs, strengths, batch_size=batch_size, desc=desc)
    rows = []
    for strength in strengths:
        row = {"alpha": strength, **summarize(measured[strength])}
        rows.append(row)
        on_row(row)
    return rows


def evaluate_text(
    scorer: OptionScorer,
    artifact: Artifact | None,
    corpus: TextCorpus,
    strengths: Sequence[float],
    *,
    batch_size: int = 8,
    on_row: Callable[[dict[str, Any]], None] = lambda row: None,
    desc: str = "text",
) -> list[dict[str, Any]]:
    """Per-token ``KL(steered ‖ base)`` of the next-token distribution and perplexity, at every ω."""
    seqs = corpus_sequences(scorer, corpus)
    return evaluate_sequences(scorer, artifact, seqs, strengths, batch_size=batch_size, on_row=on_row, desc=desc)


def perplexity(nll_sums: np.ndarray, counts: np.ndarray) -> tuple[float, float]:
    """``exp(Σ nll / Σ tokens)`` and its delta-method SE, treating sequences as independent units."""
    n, total = len(counts), float(counts.sum())
    if n == 0 or total == 0:
        return math.nan, math.nan
    mean = float(nll_sums.sum()) / total
    ppl = math.exp(mean)
    if n < 2:
        return ppl, math.nan
    residual = nll_sums - mean * counts
    se_mean = math.sqrt(float((residual**2).sum()) / (n * (n - 1))) / (total / n)
    return ppl, ppl * se_mean


class TextCost(Metric):
    """On held-out neutral passages never used in training: the per-token full-vocabulary KL to the base
    (``text_kl`` ± SE over passages) and the perplexity (``text_ppl`` ± delta-method SE). NaN where no
    passages were scored."""

    name = "text_kl"
    columns = ("text_kl", "text_kl_se", "text_ppl", "text_ppl_se")

    def compute(self, scores: Scores) -> dict[str, float]:
        if "text" not in scores.sequences:
            return {}
        s = summarize(scores.sequences["text"])
        return {"text_kl": s["kl"], "text_kl_se": s["kl_se"], "text_ppl": s["ppl"], "text_ppl_se": s["ppl_se"]}


class PromptKL(Metric):
    """The per-token full-vocabulary KL to the base on the evaluated items' own prompts (``prompt_kl``)."""

    name = "prompt_kl"
    columns = ("prompt_kl", "prompt_kl_se")

    def compute(self, scores: Scores) -> dict[str, float]:
        if "prompts" not in scores.sequences:
            return {}
        s = summarize(scores.sequences["prompts"])
        return {"prompt_kl": s["kl"], "prompt_kl_se": s["kl_se"]}


TEXT_METRICS: tuple[Metric, ...] = (TextCost(), PromptKL())
