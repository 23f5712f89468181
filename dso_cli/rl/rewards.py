"""Rewards as plain callables: ``reward(items, probs) -> Tensor[n, k]``, one value per option.

Estimators combine them with the policy (the exact estimator computes ``Σ_k π_k r_k``). A reward may
look at the whole batch: the paper's stereotype-flip reward needs the current majority decision of
each occupation, re-estimated from the policy every batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import torch
from torch import Tensor

from dso_cli.metrics import option_prob


class Reward(Protocol):
    def __call__(self, items: Sequence[Mapping[str, Any]], probs: Tensor) -> Tensor: ...


def occupation_index(items: Sequence[Mapping[str, Any]]) -> tuple[list[str], Tensor]:
    """The distinct occupations of a batch and, per item, the index of its occupation."""
    names = sorted({item["cluster"] for item in items})
    lookup = {name: i for i, name in enumerate(names)}
    return names, torch.tensor([lookup[item["cluster"]] for item in items])


def pro_anti_probs(items: Sequence[Mapping[str, Any]], probs: Tensor) -> tuple[Tensor, Tensor]:
    """Per item, the probability of the pro- and of the anti-stereotypical option (0 where absent)."""
    pro = torch.tensor([item["pro_option"] for item in items])
    anti = torch.tensor([item["anti_option"] for item in items])
    return option_prob(probs, pro), option_prob(probs, anti)


def per_occupation_gap(items: Sequence[Mapping[str, Any]], probs: Tensor) -> Tensor:
    """Signed ``P(pro | o) − P(anti | o)`` per occupation of the batch (sorted by name); differentiable."""
    _, occ = occupation_index(items)
    p_pro, p_anti = pro_anti_probs(items, probs)
    occ = occ.to(probs.device)
    n_occ = int(occ.max()) + 1
    sums = torch.zeros(n_occ, device=probs.device, dtype=probs.dtype).index_add(0, occ, p_pro - p_anti)
    counts = torch.zeros(n_occ, device=probs.device, dtype=probs.dtype).index_add(0, occ, torch.ones_like(p_pro))
    return sums / counts


class StereotypeFlipReward:
    """The paper's reward: −1 for the occupation's current majority state (pro or anti), +1 for the other.

    With two outcomes ``E[r | o] = −|P(pro|o) − P(anti|o)|``, so maximising it minimises
    Per-Occupation Bias. An ``unknown`` option earns ``unknown_reward`` (0 by default, not the paper's
    +1, which rewards refusing); options that are neither pro nor anti earn 0.
    """

    def __init__(self, unknown_reward: float = 0.0) -> None:
        self.unknown_reward = unknown_reward

    def __call__(self, items: Sequence[Mapping[str, Any]], probs: Tensor) -> Tensor:
        probs = probs.detach()
        _, occ = occupation_index(items)
        majority_is_pro = per_occupation_gap(items, probs) >= 0  # ties count as pro
        sign = torch.where(majority_is_pro[occ.to(probs.device)], -1.0, 1.0)  # reward of the pro option
        reward = torch.zeros_like(probs)
        for i, item in enumerate(items):
            if item["pro_option"] >= 0:
                reward[i, item["pro_option"]] = sign[i]
            if item["anti_option"] >= 0:
                reward[i, item["anti_option"]] = -sign[i]
            for k, group in enumerate(item["option_groups"]):
                if group == "unknown":
                    reward[i, k] = self.unknown_reward
        return reward


class AbsGapReward:
    """``J = −mean_o |P(pro|o) − P(anti|o)|`` over the batch's occupations, differentiated directly.

    As a per-option reward it is ``r = n · ∂J/∂π`` at the current policy (``n`` items in the batch), so
    ``mean_i Σ_k r_ik ∇π_ik = ∇J``: the exact estimator follows J's own gradient and the sampled ones
    estimate it without bias. Per item that is ``−sign(G_o) · n / (n_occ · n_o)`` for the pro option
    and the opposite for the anti one: with the same number of items per occupation (the trainer's
    stratified batches) this is exactly the stereotype-flip reward; it differs when occupations are
    unevenly represented (each occupation weighs the same here) and at a tie (no push at all).
    """

    def __init__(self, unknown_reward: float = 0.0) -> None:
        self.unknown_reward = unknown_reward

    def __call__(self, items: Sequence[Mapping[str, Any]], probs: Tensor) -> Tensor:
        leaf = probs.detach().clone().requires_grad_(True)
        objective = -per_occupation_gap(items, leaf).abs().mean()
        (grad,) = torch.autograd.grad(objective, leaf)
        reward = grad * len(items)
        for i, item in enumerate(items):
            for k, group in enumerate(item["option_groups"]):
                if group == "unknown":
                    reward[i, k] = self.unknown_reward
        return reward
