"""Rewards as plain callables: ``reward(items, probs) -> Tensor[n, k]``, one value per option.

Estimators combine them with the policy (the exact estimator computes ``Σ_k π_k r_k``). A reward may
look at the whole batch: the paper's stereotype-flip reward needs the current majority decision of
each occupation, re-estimated from the policy every batch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from dso_cli.benchmarks.attributes import SPECIAL
from dso_cli.config.group_schemas import DecisionBalanceOptions, RewardOptions
from dso_cli.errors import DsoError
from dso_cli.metrics import group_pairs, option_prob, pair_order_gaps, unknown_options


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


def directed(items: Sequence[Mapping[str, Any]]) -> bool:
    """Whether every item of the batch states a stereotype direction (a pro and an anti option)."""
    return all(item["pro_option"] >= 0 and item["anti_option"] >= 0 for item in items)


def head_to_head_leans(items: Sequence[Mapping[str, Any]], probs: Tensor) -> dict[tuple[str, str, str], Tensor]:
    """Per ``(cluster, g, h)`` of the batch, ``mean P(g) − P(h)`` over its items that offer both groups
    (a group's probability sums its options); differentiable. What POB measures without a stereotype
    direction, for any number of groups."""
    terms: dict[tuple[str, str, str], list[Tensor]] = {}
    for i, item in enumerate(items):
        groups = item["option_groups"]
        for g, h in group_pairs(groups):
            p_g = sum(probs[i, k] for k, group in enumerate(groups) if group == g)
            p_h = sum(probs[i, k] for k, group in enumerate(groups) if group == h)
            terms.setdefault((item["cluster"], g, h), []).append(p_g - p_h)
    return {key: torch.stack(values).mean() for key, values in terms.items()}


def worst_lean_per_cluster(items: Sequence[Mapping[str, Any]], probs: Tensor) -> Tensor:
    """Per cluster of the batch, the largest ``|head-to-head lean|`` (:func:`head_to_head_leans`)."""
    worst: dict[str, Tensor] = {}
    for (cluster, _, _), lean in head_to_head_leans(items, probs).items():
        worst[cluster] = torch.maximum(worst[cluster], lean.abs()) if cluster in worst else lean.abs()
    return torch.stack([worst[c] for c in sorted(worst)]) if worst else probs.new_zeros(0)


def cluster_pob(items: Sequence[Mapping[str, Any]], probs: Tensor) -> Tensor:
    """POB of a batch, differentiable: the mean over clusters of ``|P(pro|o) − P(anti|o)|``, or of the
    largest head-to-head lean where an item states no stereotype direction (as the ``pob`` metric)."""
    gaps = per_occupation_gap(items, probs).abs() if directed(items) else worst_lean_per_cluster(items, probs)
    return gaps.mean() if gaps.numel() else probs.new_zeros(())


def cluster_divergence(items: Sequence[Mapping[str, Any]], probs: Tensor, kind: str = "gap") -> Tensor:
    """The mean over the batch's clusters of how far each cluster's mean decision is from 50/50:
    ``gap`` is :func:`cluster_pob` (POB itself); ``kl`` is ``KL(uniform ‖ (P̄(pro|o), P̄(anti|o))
    renormalised)`` (≈ 2·gap² near 50/50, so its pull shrinks with the lean instead of keeping its size
    until the sign flips). Without a stereotype direction each cluster's largest head-to-head lean."""
    if kind == "gap":
        return cluster_pob(items, probs)
    if directed(items):
        _, occ = occupation_index(items)
        p_pro, p_anti = pro_anti_probs(items, probs)
        occ = occ.to(probs.device)
        n = int(occ.max()) + 1
        counts = probs.new_zeros(n).index_add(0, occ, torch.ones_like(p_pro))
        pro = probs.new_zeros(n).index_add(0, occ, p_pro) / counts
        anti = probs.new_zeros(n).index_add(0, occ, p_anti) / counts
        return _divergence_from_even(pro, anti, kind).mean()
    leans = worst_lean_per_cluster(items, probs)  # |P̄(g) − P̄(h)| of two groups that split one unit
    if not leans.numel():
        return probs.new_zeros(())
    return _divergence_from_even((1 + leans) / 2, (1 - leans) / 2, kind).mean()


def flip_rewards(items: Sequence[Mapping[str, Any]], probs: Tensor) -> Tensor:
    """The stereotype-flip reward without a direction: in each head-to-head of a cluster the group
    chosen more often earns −1 and the other +1 (an item with more than two people averages its
    head-to-heads). With two groups this is the paper's reward, the leaning group standing for the
    majority state (an exact tie earns 0 instead of counting as pro)."""
    leans = head_to_head_leans(items, probs.detach())
    reward = torch.zeros_like(probs)
    for i, item in enumerate(items):
        groups = item["option_groups"]
        for g, h in (matches := group_pairs(groups)):
            sign = torch.sign(leans[(item["cluster"], g, h)]) / len(matches)
            for k, group in enumerate(groups):
                reward[i, k] += -sign if group == g else sign if group == h else 0.0
    return reward


@dataclass
class StereotypeFlipReward(RewardOptions):
    """The paper's reward: −1 for the occupation's current majority state (pro or anti), +1 for the other.

    With two outcomes ``E[r | o] = −|P(pro|o) − P(anti|o)|``, so maximising it minimises
    Per-Occupation Bias. An ``unknown`` option earns ``unknown_reward`` (0 by default, not the paper's
    +1, which rewards refusing); options that are neither pro nor anti earn 0. Without a stereotype
    direction (race, any number of groups) the majority state is the leaning group of each head-to-head
    (:func:`flip_rewards`), so the reward needs no direction.
    """

    def __call__(self, items: Sequence[Mapping[str, Any]], probs: Tensor) -> Tensor:
        probs = probs.detach()
        if not directed(items):
            reward = flip_rewards(items, probs)
            return _pay_unknown(items, reward, self.unknown_reward)
        _, occ = occupation_index(items)
        majority_is_pro = per_occupation_gap(items, probs) >= 0  # ties count as pro
        sign = torch.where(majority_is_pro[occ.to(probs.device)], -1.0, 1.0)  # reward of the pro option
        reward = torch.zeros_like(probs)
        for i, item in enumerate(items):
            if item["pro_option"] >= 0:
                reward[i, item["pro_option"]] = sign[i]
            if item["anti_option"] >= 0:
                reward[i, item["anti_option"]] = -sign[i]
        return _pay_unknown(items, reward, self.unknown_reward)


@dataclass
class AbsGapReward(RewardOptions):
    """``J = −mean_o |P(pro|o) − P(anti|o)|`` over the batch's occupations, differentiated directly.

    As a per-option reward it is ``r = n · ∂J/∂π`` at the current policy (``n`` items in the batch), so
    ``mean_i Σ_k r_ik ∇π_ik = ∇J``: the exact estimator follows J's own gradient and the sampled ones
    estimate it without bias. Per item that is ``−sign(G_o) · n / (n_occ · n_o)`` for the pro option
    and the opposite for the anti one: with the same number of items per occupation (the trainer's
    stratified batches) this is exactly the stereotype-flip reward; it differs when occupations are
    unevenly represented (each occupation weighs the same here) and at a tie (no push at all).
    Without a stereotype direction (any number of groups) the gap is each cluster's largest
    head-to-head lean (:func:`worst_lean_per_cluster`), what POB measures there.
    """

    def __call__(self, items: Sequence[Mapping[str, Any]], probs: Tensor) -> Tensor:
        leaf = probs.detach().clone().requires_grad_(True)
        gaps = per_occupation_gap(items, leaf).abs() if directed(items) else worst_lean_per_cluster(items, leaf)
        if not gaps.numel():
            return _pay_unknown(items, torch.zeros_like(leaf), self.unknown_reward)
        (grad,) = torch.autograd.grad(-gaps.mean(), leaf, allow_unused=True)
        reward = torch.zeros_like(leaf) if grad is None else grad * len(items)
        return _pay_unknown(items, reward, self.unknown_reward)


def _pay_unknown(items: Sequence[Mapping[str, Any]], reward: Tensor, unknown_reward: float) -> Tensor:
    """``reward`` with every ``unknown`` ("can't tell") option paid ``unknown_reward``."""
    for i, item in enumerate(items):
        for k, group in enumerate(item["option_groups"]):
            if group == "unknown":
                reward[i, k] = unknown_reward
    return reward


def _two_people(item: Mapping[str, Any]) -> tuple[int, int]:
    """The two options a per-decision term compares: the pro and the anti option, or, without a
    stereotype direction, the two people's options in the sorted order of their groups (every term
    reads them symmetrically, so only a consistent order matters); ``(-1, -1)`` otherwise."""
    if item["pro_option"] >= 0 and item["anti_option"] >= 0:
        return item["pro_option"], item["anti_option"]
    people = sorted((group, k) for k, group in enumerate(item["option_groups"]) if group not in SPECIAL)
    if len(people) == 2 and people[0][0] != people[1][0]:
        return people[0][1], people[1][1]
    return -1, -1


def _person_pair_probs(items: Sequence[Mapping[str, Any]], probs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The probabilities of the two people each item compares (:func:`_two_people`: ``P(pro)``,
    ``P(anti)`` where a stereotype direction is stated) and a mask of the items that have both (the
    decisions with a fair point)."""
    first, second = zip(*(_two_people(item) for item in items), strict=True) if items else ((), ())
    a, b = torch.tensor(first, dtype=torch.long), torch.tensor(second, dtype=torch.long)
    has = ((a >= 0) & (b >= 0)).to(probs.device)
    return option_prob(probs, a), option_prob(probs, b), has


def item_divergence(items: Sequence[Mapping[str, Any]], probs: Tensor, kind: str = "kl") -> Tensor:
    """Per item, how far its decision between the pro- and the anti-stereotypical person is from 50/50.

    ``gap``: ``|P(pro) − P(anti)|`` (the ``item_bias`` metric itself; its gradient in the logits
    vanishes on confident items, as ``p(1 − p)``). ``kl``: ``KL(uniform ‖ π̃)`` of the two persons'
    renormalised probabilities, ``−log 2 − ½ (log π̃_pro + log π̃_anti)``, whose logit gradient
    ``π̃_pro − ½`` stays large where the model is sure. Mass on an ``unknown`` option is left out of
    both (renormalised away), so a decision is fair at 50/50 *or* at "can't tell". Without a stereotype
    direction the two people are compared in their groups' order (:func:`_two_people`; both
    divergences are symmetric); 0 for items that do not name two people of two groups.
    """
    p_pro, p_anti, has = _person_pair_probs(items, probs)
    out = _divergence_from_even(p_pro, p_anti, kind)
    return torch.where(has, out, torch.zeros_like(out))


def _divergence_from_even(a: Tensor, b: Tensor, kind: str) -> Tensor:
    """How far two masses are from an even split: ``gap`` is ``|a − b|``, ``kl`` is ``KL(uniform ‖ (a, b)
    renormalised)`` = ``−log 2 − ½ (log ã + log b̃)``."""
    if kind == "gap":
        return (a - b).abs()
    if kind != "kl":
        raise DsoError(f"reward.item_divergence must be kl or gap, not {kind!r}")
    share = (a / (a + b).clamp_min(1e-12)).clamp(1e-6, 1 - 1e-6)
    return -math.log(2.0) - 0.5 * (share.log() + (1 - share).log())


def pair_gaps(items: Sequence[Mapping[str, Any]], probs: Tensor) -> Tensor:
    """Per counterbalanced pair in the batch, ``|mean over its items of P(pro) − P(anti)|``: POB at the
    level of one decision asked in every order (a pair that always picks the man, whoever is listed
    first, has gap 1; one that picks whoever is listed first has gap 0). Differentiable; items without
    a pro or an anti option are left out."""
    return pair_leans(items, probs)[1].abs()


def pair_leans(items: Sequence[Mapping[str, Any]], probs: Tensor) -> tuple[list[str], Tensor]:
    """``(pair ids, leans)``: per counterbalanced pair in the batch (sorted by id), the mean over its
    items of ``P(pro) − P(anti)``; items without a pro or an anti option are left out. Differentiable."""
    p_pro, p_anti, has = _person_pair_probs(items, probs)
    pairs = sorted({item["pair_id"] for item, ok in zip(items, has.tolist(), strict=True) if ok})
    if not pairs:
        return [], probs.new_zeros(0)
    lookup = {pair: i for i, pair in enumerate(pairs)}
    index = torch.tensor([lookup.get(item["pair_id"], 0) for item in items], device=probs.device)
    weight = has.to(probs.dtype)
    sums = probs.new_zeros(len(pairs)).index_add(0, index, (p_pro - p_anti) * weight)
    counts = probs.new_zeros(len(pairs)).index_add(0, index, weight)
    return pairs, sums / counts


def format_gaps(items: Sequence[Mapping[str, Any]], probs: Tensor) -> Tensor:
    """Per scenario asked in several answer formats (items sharing ``scenario_id``, each format one
    counterbalanced pair), ``|lean_f − lean_g|`` for every two of its formats, ``lean`` a pair's mean
    ``P(pro) − P(anti)``: zero when the decision over the people is the same whichever way the answer is
    asked, however far from 50/50 it is. Differentiable; empty without such scenarios."""
    pairs, leans = pair_leans(items, probs)
    scenario_of = {item["pair_id"]: item.get("scenario_id") for item in items}
    by_scenario: dict[str, list[int]] = {}
    for i, pair in enumerate(pairs):
        if scenario_of[pair]:
            by_scenario.setdefault(scenario_of[pair], []).append(i)
    gaps = [(leans[a] - leans[b]).abs() for members in by_scenario.values()
            for k, a in enumerate(members) for b in members[k + 1 :]]  # fmt: skip
    return torch.stack(gaps) if gaps else probs.new_zeros(0)


def position_shares(items: Sequence[Mapping[str, Any]], probs: Tensor) -> tuple[Tensor, Tensor]:
    """The batch's mean probability of the first- and of the second-listed person, over the items that
    name two people (a "can't tell" option is skipped). Differentiable.

    Per-item and per-pair terms are blind to a shift that moves every decision a little towards one
    position: each stays near 50/50, yet the argmax follows the position on most items. The batch's
    mean decision sees it: its two shares are equal when neither position is preferred on average
    (whatever each item does).
    """
    first, second = [], []
    for i, item in enumerate(items):
        people = [k for k, group in enumerate(item["option_groups"]) if group != "unknown"]
        if len(people) == 2:
            first.append(probs[i, people[0]])
            second.append(probs[i, people[1]])
    if not first:
        return probs.new_full((), 0.5), probs.new_full((), 0.5)
    return torch.stack(first).mean(), torch.stack(second).mean()


def position_divergence(items: Sequence[Mapping[str, Any]], probs: Tensor, kind: str = "kl") -> Tensor:
    """How far the batch's mean decision (:func:`position_shares`) is from 50/50 between the first- and
    the second-listed person, by the same divergence as :func:`item_divergence`: ``gap`` is
    ``|P̄(first) − P̄(second)|``, ``kl`` is ``KL(uniform ‖ renormalised shares)`` (≈ 2·gap² near 50/50,
    so its pull grows with the lean instead of flipping sign at 0)."""
    return _divergence_from_even(*position_shares(items, probs), kind)


def over_people(items: Sequence[Mapping[str, Any]], probs: Tensor) -> Tensor:
    """``probs`` renormalised over the options that name a person: a "can't tell" option's mass taken
    out, so that refusing neither shrinks nor widens a gap between people. Rows without an ``unknown``
    option are returned as they are (no rounding of a row that sums to 1)."""
    unknown = unknown_options(items, probs.shape[1])
    if not unknown.any():
        return probs
    people = probs * torch.from_numpy(~unknown).to(device=probs.device, dtype=probs.dtype)
    return people / people.sum(-1, keepdim=True).clamp_min(1e-12)


@dataclass
class DecisionBalanceReward(DecisionBalanceOptions):
    """Fair per decision: every ambiguous decision 50/50 between the two people (or "can't tell").

    The objective, maximised, is ``J = −mean_i D(π_i) − order_weight · mean_pairs order_gap
    − pair_weight · mean_pairs pair_gap − format_weight · mean format_gap − position_weight · D(batch mean)
    − occupation_weight · mean_o D_o``, with
    ``D`` the per-item divergence from 50/50 (:func:`item_divergence`), the order gap (position
    preference, :func:`dso_cli.metrics.pair_order_gaps`) and the gender gap (:func:`pair_gaps`) of
    each counterbalanced pair, the disagreement between the answer formats a scenario is asked in
    (:func:`format_gaps`, with ``bias.format_twins`` > 1), the batch's mean preference for the first-listed person
    (:func:`position_divergence`), and each occupation's distance from 50/50 ``D_o``
    (:func:`cluster_divergence`: the paper's per-occupation gap, or its KL). The two pair terms split an item's
    departure from 50/50 into what follows the listing order and what follows gender, and push on each
    without saturating.
    Unlike the per-occupation gap alone, none of the per-decision terms is met by a rule that answers
    whoever is named first. As a per-option reward it is ``r = n · ∂J/∂π`` at the current policy (see
    :class:`AbsGapReward`); an ``unknown`` option earns ``unknown_reward`` (its mass is outside ``D``:
    refusing is fair, the reward says whether it pays).
    """

    def objective(self, items: Sequence[Mapping[str, Any]], probs: Tensor) -> Tensor:
        """``J`` of the batch (higher is fairer), differentiable in ``probs``. Every term reads the
        probabilities renormalised over the people (:func:`over_people`): refusing is fair, and only
        ``unknown_reward`` says whether it pays."""
        probs = over_people(items, probs)
        objective = -item_divergence(items, probs, self.item_divergence).mean()
        if self.order_weight > 0:
            gaps = list(pair_order_gaps(items, probs).values())
            if gaps:
                objective = objective - self.order_weight * torch.stack(gaps).mean()
        if self.pair_weight > 0:
            gaps = pair_gaps(items, probs)
            if len(gaps):
                objective = objective - self.pair_weight * gaps.mean()
        if self.format_weight > 0:
            gaps = format_gaps(items, probs)
            if len(gaps):
                objective = objective - self.format_weight * gaps.mean()
        if self.position_weight > 0:
            objective = objective - self.position_weight * position_divergence(items, probs, self.item_divergence)
        if self.occupation_weight > 0:
            gap = cluster_divergence(items, probs, self.occupation_divergence)
            objective = objective - self.occupation_weight * gap
        return objective

    def __call__(self, items: Sequence[Mapping[str, Any]], probs: Tensor) -> Tensor:
        leaf = probs.detach().clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(self.objective(items, leaf), leaf, allow_unused=True)
        reward = torch.zeros_like(leaf) if grad is None else grad * len(items)
        return _pay_unknown(items, reward, self.unknown_reward)
