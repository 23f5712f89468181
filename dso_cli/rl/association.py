"""The pronoun-association term of the DSO objective (``optimizer.association_weight``).

The decision terms make "which of them is the nurse?" a coin flip; they leave "The nurse said that
…" where it was (the association, :mod:`dso_cli.evaluation.association`). This term asks for it
directly on the training occupations: the pronoun preference renormalised over the pair (he/she,
his/her) pulled to 50/50, while the probes whose pronoun a name determines ("Mary is a nurse. Mary said
that") keep the base model's preference (the KL to it), so the transform cannot flatten pronouns
wholesale. The pull is KL(uniform ‖ π), the decision reward's own divergence: its gradient in the
pronouns' log-odds is P(she) − ½, so a near-certain "she" (.99) is pulled as hard as a moderate one,
where ``(P(she) − ½)²`` would vanish with ``P(she)(1 − P(she))``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import torch
from torch import Tensor

from dso_cli.benchmarks.pronoun_probes import ASSOCIATION, CONTROL, association_probes
from dso_cli.benchmarks.schema import DecisionItem
from dso_cli.metrics import kl_divergence
from dso_cli.scoring import OptionScorer


class AssociationProbes:
    """The probes of the training items' occupations (none without occupation items), drawn per step
    from a stream of the step number alone (a resumed run draws the same probes without saved state)."""

    def __init__(self, items: Sequence[DecisionItem], per_step: int, seed: int) -> None:
        probes = association_probes(items)
        self.association = [p for p in probes if p["question_type"] == ASSOCIATION]
        self.controls = [p for p in probes if p["question_type"] == CONTROL]
        self.per_step, self.seed = per_step, seed

    def __bool__(self) -> bool:
        return bool(self.association)

    def draw(self, step: int) -> tuple[list[DecisionItem], list[DecisionItem]]:
        rng = random.Random(self.seed * 1_000_003 + step)
        k = min(self.per_step, len(self.association))
        return rng.sample(self.association, k), rng.sample(self.controls, min(k, len(self.controls)))


def association_loss(
    scorer: OptionScorer,
    association: Sequence[DecisionItem],
    controls: Sequence[DecisionItem],
    base_controls: Tensor,
    divergence: str = "kl",
) -> tuple[Tensor, Tensor]:
    """The mean divergence from 50/50 over ``association`` probes (steered, with gradients): KL(uniform ‖ π)
    (``kl``) or ``(P(she) − ½)²`` (``square``); and the mean two-option KL(steered ‖ base) over
    ``controls`` given their base log-probabilities."""
    logp = torch.log_softmax(scorer.logprobs(association, grad=True), dim=-1)
    if divergence == "square":
        gap = (logp[:, 1].exp() - 0.5).pow(2).mean()
    else:
        gap = (-logp.mean(-1) - math.log(logp.shape[-1])).mean()
    control_kl = kl_divergence(scorer.logprobs(controls, grad=True), base_controls).mean()
    return gap, control_kl
