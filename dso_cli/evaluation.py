"""Evaluate a steering artifact at a grid of strengths: one row of metrics per (split, ω)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from tqdm.auto import tqdm

from dso_cli.metrics import decision_metrics
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
) -> list[dict[str, Any]]:
    """Metrics at every ω in ``alphas`` (the base model, ω = 0, is scored once for the KL column)."""
    base = policy(scorer.logprobs(items, progress=f"{desc} base")).cpu()
    rows = []
    for alpha in tqdm(alphas, desc=desc, unit="strength"):
        if alpha == 0.0 or artifact is None:
            probs = base
        else:
            with artifact.apply(scorer.model, alpha):
                probs = policy(scorer.logprobs(items, progress=f"{desc} w={alpha:g}")).cpu()
        row = {"alpha": alpha, **decision_metrics(items, probs, base, bootstrap_reps=bootstrap_reps, seed=seed)}
        rows.append(row)
        on_row(row)
    return rows
