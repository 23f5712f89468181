"""Evaluate a steering artifact at a grid of strengths: one row of metrics per (split, ω).

Decision items (bias benchmarks, MMLU) give the policy metrics of :mod:`dso_cli.metrics`; neutral
text gives the per-token KL to the base model and the perplexity.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from dso_cli.benchmarks.neutral_text import TextCorpus
from dso_cli.metrics import decision_metrics, mean_se
from dso_cli.scoring import OptionScorer, policy
from dso_cli.steering.artifact import Artifact

Item = Mapping[str, Any]


def evaluate_strengths(
    scorer: OptionScorer,
    artifact: Artifact | None,
    items: Sequence[Item],
    alphas: Sequence[float],
    *,
    bootstrap_reps: int = 1000,
    seed: int = 0,
    on_row: Callable[[dict[str, Any]], None] = lambda row: None,
    desc: str = "eval",
    extra_metrics: Callable[[Sequence[Item], Tensor], dict[str, Any]] | None = None,
    base: Tensor | None = None,
) -> list[dict[str, Any]]:
    """Metrics at every ω in ``alphas`` (the base model, ω = 0, is scored once for the KL column).

    ``extra_metrics(items, probs)`` adds benchmark-specific columns to each row. ``base``: the base
    model's option probabilities on ``items`` when already known (see :func:`base_policy`).
    """
    if base is None:
        base = base_policy(scorer, items, desc)
    rows = []
    for alpha in tqdm(alphas, desc=desc, unit="strength"):
        if alpha == 0.0 or artifact is None:
            probs = base
        else:
            with artifact.apply(scorer.model, alpha):
                probs = policy(scorer.logprobs(items, progress=f"{desc} w={alpha:g}")).cpu()
        row = {"alpha": alpha, **decision_metrics(items, probs, base, bootstrap_reps=bootstrap_reps, seed=seed)}
        if extra_metrics is not None:
            row.update(extra_metrics(items, probs))
        rows.append(row)
        on_row(row)
    return rows


def base_policy(scorer: OptionScorer, items: Sequence[Item], desc: str = "eval") -> Tensor:
    """The unsteered model's option probabilities on ``items`` (shared by every method's ω = 0)."""
    return policy(scorer.logprobs(items, progress=f"{desc} base")).cpu()


def evaluate_text(
    scorer: OptionScorer,
    artifact: Artifact | None,
    corpus: TextCorpus,
    alphas: Sequence[float],
    *,
    batch_size: int = 8,
    on_row: Callable[[dict[str, Any]], None] = lambda row: None,
    desc: str = "text",
) -> list[dict[str, Any]]:
    """Per-token ``KL(steered ‖ base)`` of the next-token distribution and perplexity, at every ω.

    Each batch runs the base model once and the steered model once per ω, so the base log-probs are
    never stored for the whole corpus. ``kl_se`` is the standard error over passages.
    """
    tokenizer = scorer.tokenizer
    seqs = [tokenizer(p, truncation=True, max_length=corpus.max_tokens)["input_ids"] for p in corpus.passages]
    seqs = sorted((s for s in seqs if len(s) >= 2), key=len)
    nll = {a: [] for a in alphas}  # per passage: (sum of token NLL, token count)
    kl = {a: [] for a in alphas}
    batches = [seqs[i : i + batch_size] for i in range(0, len(seqs), batch_size)]
    with torch.no_grad():
        for batch in tqdm(batches, desc=desc, unit="batch", leave=False):
            base, lengths = scorer.token_logprobs(batch)
            for alpha in alphas:
                if alpha == 0.0 or artifact is None:
                    logp = base
                else:
                    with artifact.apply(scorer.model, alpha):
                        logp, _ = scorer.token_logprobs(batch)
                for row, n in enumerate(lengths.tolist()):
                    pred, target = logp[row, : n - 1], torch.tensor(batch[row][1:], device=logp.device)
                    token_nll = -pred.gather(1, target[:, None])[:, 0]
                    token_kl = (pred.exp() * (pred - base[row, : n - 1])).sum(-1)
                    nll[alpha].append((float(token_nll.sum()), n - 1))
                    kl[alpha].append(float(token_kl.mean()))
    rows = []
    for alpha in alphas:
        total, count = (sum(x) for x in zip(*nll[alpha], strict=True)) if nll[alpha] else (math.nan, 0)
        kls = np.array(kl[alpha])
        row = {
            "alpha": alpha,
            "kl": float(kls.mean()) if len(kls) else math.nan,
            "kl_se": mean_se(kls),
            "ppl": math.exp(total / count) if count else math.nan,
            "n_tokens": int(count),
        }
        rows.append(row)
        on_row(row)
    return rows
