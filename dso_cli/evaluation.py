"""Evaluate a steering artifact at a grid of strengths: one row of metrics per (split, ω).

Decision items (bias benchmarks, MMLU) give the policy metrics of :mod:`dso_cli.metrics`; neutral
text gives the per-token KL to the base model and the perplexity.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from dso_cli.benchmarks.neutral_text import TextCorpus
from dso_cli.benchmarks.schema import DecisionItem
from dso_cli.metrics import decision_metrics, mean_se
from dso_cli.scoring import OptionScorer, policy
from dso_cli.steering.artifact import Artifact


def evaluate_strengths(
    scorer: OptionScorer,
    artifact: Artifact | None,
    items: Sequence[DecisionItem],
    strengths: Sequence[float],
    *,
    bootstrap_reps: int = 1000,
    seed: int = 0,
    on_row: Callable[[dict[str, Any]], None] = lambda row: None,
    desc: str = "eval",
    extra_metrics: Callable[[Sequence[DecisionItem], Tensor], dict[str, Any]] | None = None,
    base: Tensor | None = None,
) -> list[dict[str, Any]]:
    """Metrics at every ω in ``strengths`` (the base model, ω = 0, is scored once for the KL column).

    ``extra_metrics(items, probs)`` adds benchmark-specific columns to each row. ``base``: the base
    model's option probabilities on ``items`` when already known (see :func:`base_policy`).
    """
    if base is None:
        base = base_policy(scorer, items, desc)
    rows = []
    for strength in tqdm(strengths, desc=desc, unit="strength"):
        if strength == 0.0 or artifact is None:
            probs = base
        else:
            with artifact.steer(scorer, strength):
                probs = policy(scorer.logprobs(items, progress=f"{desc} w={strength:g}")).cpu()
        row = {"alpha": strength, **decision_metrics(items, probs, base, bootstrap_reps=bootstrap_reps, seed=seed)}
        if extra_metrics is not None:
            row.update(extra_metrics(items, probs))
        rows.append(row)
        on_row(row)
    return rows


def base_policy(scorer: OptionScorer, items: Sequence[DecisionItem], desc: str = "eval") -> Tensor:
    """The unsteered model's option probabilities on ``items`` (shared by every method's ω = 0)."""
    return policy(scorer.logprobs(items, progress=f"{desc} base")).cpu()


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
    tokenizer = scorer.tokenizer
    seqs = [tokenizer(p, truncation=True, max_length=corpus.max_tokens)["input_ids"] for p in corpus.passages]
    return evaluate_sequences(scorer, artifact, seqs, strengths, batch_size=batch_size, on_row=on_row, desc=desc)


def prompt_sequences(scorer: OptionScorer, items: Sequence[DecisionItem], max_items: int) -> list[list[int]]:
    """Token ids of up to ``max_items`` text items' rendered prompts (spread evenly over ``items``),
    for the full-vocabulary KL on the benchmark's own prompts; items with images are left out."""
    text = [item for item in items if not item.get("images")]
    if max_items <= 0 or not text:
        return []
    step = max(1, len(text) // max_items)
    return [list(scorer.encode(item).prompt_ids) for item in text[::step][:max_items]]


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
    """Per-token ``KL(steered ‖ base)`` over the full vocabulary, and perplexity, of token sequences.

    Each batch runs the base model once and the steered model once per ω, so the base log-probs are
    never stored for the whole corpus. ``kl_se`` is the standard error over sequences; ``ppl_se`` the
    delta-method standard error of the perplexity (a ratio of token sums, sequences as the units).
    """
    seqs = sorted((list(s) for s in seqs if len(s) >= 2), key=len)
    nll = {a: [] for a in strengths}  # per sequence: (sum of token NLL, token count)
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
                    nll[strength].append((float(token_nll.sum()), n - 1))
                    kl[strength].append(float(token_kl.mean()))
    rows = []
    for strength in strengths:
        sums = np.array(nll[strength], dtype=float).reshape(-1, 2)
        kls = np.array(kl[strength])
        ppl, ppl_se = perplexity(sums[:, 0], sums[:, 1])
        row = {
            "alpha": strength,
            "kl": float(kls.mean()) if len(kls) else math.nan,
            "kl_se": mean_se(kls),
            "ppl": ppl,
            "ppl_se": ppl_se,
            "n_tokens": int(sums[:, 1].sum()),
        }
        rows.append(row)
        on_row(row)
    return rows


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


TEXT_COLUMNS = ["text_kl", "text_kl_se", "text_ppl", "text_ppl_se", "prompt_kl", "prompt_kl_se"]


def capability_cost(
    scorer: OptionScorer,
    artifact: Artifact | None,
    strengths: Sequence[float],
    *,
    corpus: TextCorpus | None,
    prompts: Sequence[Sequence[int]] = (),
    batch_size: int = 8,
    desc: str = "capability",
) -> dict[float, dict[str, float]]:
    """Per ω: full-vocabulary KL and perplexity on held-out neutral text (``text_*``, with ``corpus``)
    and the KL on the benchmark's own held-out prompts (``prompt_*``, with ``prompts``): only the
    columns measured, so the results of two calls merge with ``|``."""
    out: dict[float, dict[str, float]] = {a: {} for a in strengths}
    if corpus is not None:
        for row in evaluate_text(scorer, artifact, corpus, strengths, batch_size=batch_size, desc=f"{desc} text"):
            out[row["alpha"]].update(text_kl=row["kl"], text_kl_se=row["kl_se"], text_ppl=row["ppl"],
                                     text_ppl_se=row["ppl_se"])  # fmt: skip
    if prompts:
        for row in evaluate_sequences(
            scorer, artifact, prompts, strengths, batch_size=batch_size, desc=f"{desc} prompts"
        ):
            out[row["alpha"]].update(prompt_kl=row["kl"], prompt_kl_se=row["kl_se"])
    return out
