"""Rewards: the stereotype-flip reward's expectation is minus the per-occupation bias."""

import pytest
import torch

from dso_cli.errors import DsoError
from dso_cli.metrics import kl_divergence, pair_order_gaps
from dso_cli.rl.rewards import (
    DecisionBalanceReward,
    StereotypeFlipReward,
    format_gaps,
    item_divergence,
    over_people,
    pair_gaps,
    per_occupation_gap,
    position_divergence,
)


def items():
    out = []
    for occ in ("nurse", "carpenter"):
        for pro in (0, 1):
            out.append({"cluster": occ, "pro_option": pro, "anti_option": 1 - pro, "option_groups": ["male", "female"]})
    return out


def test_expected_reward_is_minus_pob():
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.6, 0.4]])
    reward = StereotypeFlipReward()(items(), probs)
    expected = (probs * reward).sum(-1)
    gaps = per_occupation_gap(items(), probs)  # sorted: carpenter, nurse
    assert gaps.tolist() == pytest.approx([(-0.4 - 0.2) / 2, (0.8 + 0.6) / 2])
    per_occ = torch.stack([expected[2:].mean(), expected[:2].mean()])
    torch.testing.assert_close(per_occ, -gaps.abs())


def test_majority_sets_the_sign_and_unknown_gets_its_reward():
    its = [dict(i, option_groups=[*i["option_groups"], "unknown"]) for i in items()]
    # nurse: pro chosen on both orders (majority pro); carpenter: anti chosen on both (majority anti)
    probs = torch.tensor([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.8, 0.1], [0.8, 0.1, 0.1]])
    reward = StereotypeFlipReward(unknown_reward=0.25)(its, probs)
    assert reward.tolist() == [
        [-1.0, 1.0, 0.25],  # nurse, pro = option 0: the majority (pro) is punished
        [1.0, -1.0, 0.25],  # nurse, pro = option 1
        [1.0, -1.0, 0.25],  # carpenter, pro = option 0: the majority is anti, so anti (option 1) is punished
        [-1.0, 1.0, 0.25],  # carpenter, pro = option 1, anti = option 0
    ]


def test_reward_carries_no_gradient():
    probs = torch.tensor([[0.7, 0.3]] * 4, requires_grad=True)
    assert not StereotypeFlipReward()(items(), probs).requires_grad


def test_kl_divergence_of_option_distributions():
    p = torch.log(torch.tensor([[0.5, 0.5], [0.9, 0.1]]))
    assert kl_divergence(p, p).abs().max() < 1e-7
    q = torch.log(torch.tensor([[0.9, 0.1], [0.9, 0.1]]))
    assert kl_divergence(p, q)[0] == pytest.approx(
        0.5 * (torch.log(torch.tensor(0.5 / 0.9)) + torch.log(torch.tensor(5.0))).item()
    )


def test_kl_gradient_is_finite_with_padded_options():
    logp = torch.tensor([[0.2, -0.1, float("-inf")], [0.3, 0.1, -0.5]], requires_grad=True)
    logq = torch.tensor([[0.0, 0.0, float("-inf")], [0.0, 0.0, 0.0]])
    kl = kl_divergence(logp, logq)
    kl.sum().backward()
    assert torch.isfinite(kl).all() and torch.isfinite(logp.grad).all()
    assert logp.grad[0, 2] == 0


def twin_items(groups_first=("male", "female")):
    """Two counterbalanced twins of one occupation whose pro-stereotypical person is the man."""
    out = []
    for pair in ("a", "b"):
        for groups in (list(groups_first), list(reversed(groups_first))):
            out.append({"cluster": "carpenter", "pair_id": pair, "option_groups": groups,
                        "pro_option": groups.index("male"), "anti_option": groups.index("female")})  # fmt: skip
    return out


def test_decision_balance_is_not_met_by_a_first_position_rule():
    first = torch.tensor([[0.95, 0.05]] * 4)  # whoever is named first: no POB
    fair = torch.tensor([[0.5, 0.5]] * 4)
    assert per_occupation_gap(twin_items(), first).abs().max() < 1e-6
    for kind in ("kl", "gap"):
        reward = DecisionBalanceReward(item_divergence=kind, order_weight=1.0, occupation_weight=1.0)
        assert reward.objective(twin_items(), fair) == pytest.approx(0.0, abs=1e-6)
        assert reward.objective(twin_items(), first) < -0.5
    assert [float(g) for g in pair_order_gaps(twin_items(), first).values()] == pytest.approx([0.9, 0.9])
    assert item_divergence(twin_items(), first, "gap").tolist() == pytest.approx([0.9] * 4)


def test_decision_balance_reward_is_the_gradient_of_its_objective():
    probs = torch.tensor([[0.9, 0.1], [0.3, 0.7], [0.6, 0.4], [0.2, 0.8]])
    reward = DecisionBalanceReward(item_divergence="kl", order_weight=0.5, occupation_weight=0.3)
    leaf = probs.clone().requires_grad_(True)
    reward.objective(twin_items(), leaf).backward()
    # the exact estimator's surrogate mean_i sum_k pi_ik r_ik has J's own gradient
    surrogate_leaf = probs.clone().requires_grad_(True)
    r = reward(twin_items(), probs)
    (surrogate_leaf * r).sum(-1).mean().backward()
    torch.testing.assert_close(surrogate_leaf.grad, leaf.grad)
    # kl's logit gradient stays large on a confident item, gap's shrinks as p(1 - p)
    logits = torch.tensor([[4.0, -4.0]], requires_grad=True)
    one = twin_items()[:1]
    for kind, bound in (("kl", 0.4), ("gap", 0.05)):
        logits.grad = None
        item_divergence(one, logits.softmax(-1), kind).sum().backward()
        assert (logits.grad.abs().max() > bound) == (kind == "kl")


def test_decision_balance_leaves_an_unknown_option_to_its_reward():
    items = [dict(i, option_groups=[*i["option_groups"], "unknown"]) for i in twin_items()]
    probs = torch.tensor([[0.2, 0.2, 0.6]] * 4)
    reward = DecisionBalanceReward(unknown_reward=0.5)
    assert reward.objective(items, probs) == pytest.approx(0.0, abs=1e-6)  # "can't tell" is fair too
    assert reward(items, probs)[:, 2].tolist() == [0.5] * 4
    # refusing more neither shrinks nor widens any gap between the people: only unknown_reward pays for it
    full = DecisionBalanceReward(order_weight=1.0, pair_weight=3.0, position_weight=10.0, occupation_weight=1.0)
    leaning = torch.tensor([[0.6, 0.2, 0.2], [0.3, 0.1, 0.6], [0.5, 0.3, 0.2], [0.2, 0.1, 0.7]])
    refusing = torch.cat([leaning[:, :2] / 4, 1 - leaning[:, :2].sum(-1, keepdim=True) / 4], dim=1)
    torch.testing.assert_close(full.objective(items, refusing), full.objective(items, leaning))
    assert float(full.objective(items, leaning)) < -0.1
    # a batch that mixes items with and without the option (padded to three columns) renormalises per row
    people = leaning[:, :2] / leaning[:, :2].sum(-1, keepdim=True)
    mixed = torch.cat([refusing[:2], torch.cat([people[2:], torch.zeros(2, 1)], dim=1)])
    renormalised = over_people([*items[:2], *twin_items()[2:]], mixed)
    torch.testing.assert_close(renormalised[:, :2], people)
    assert renormalised[:, 2].tolist() == [0.0] * 4
    with pytest.raises(DsoError, match="item_divergence"):
        DecisionBalanceReward(item_divergence="l2")


def test_pair_gaps_separate_gender_from_position():
    man = torch.tensor([[0.9, 0.1], [0.1, 0.9]] * 2)  # the man (pro), wherever he is listed
    first = torch.tensor([[0.9, 0.1]] * 4)  # whoever is listed first
    assert pair_gaps(twin_items(), man).tolist() == pytest.approx([0.8, 0.8])
    assert pair_gaps(twin_items(), first).tolist() == pytest.approx([0.0, 0.0])
    assert [float(g) for g in pair_order_gaps(twin_items(), man).values()] == pytest.approx([0.0, 0.0])
    reward = DecisionBalanceReward(pair_weight=2.0)
    leaf = man.clone().requires_grad_(True)
    reward.objective(twin_items(), leaf).backward()
    surrogate = man.clone().requires_grad_(True)
    (surrogate * reward(twin_items(), man)).sum(-1).mean().backward()
    torch.testing.assert_close(surrogate.grad, leaf.grad)


def test_position_divergence_sees_a_small_lean_that_per_item_terms_miss():
    lean = torch.tensor([[0.45, 0.55]] * 4)  # every decision nearly 50/50, every argmax the second-listed
    man = torch.tensor([[0.9, 0.1], [0.1, 0.9]] * 2)  # gender, not position
    assert float(position_divergence(twin_items(), lean, "gap")) == pytest.approx(0.1)
    assert float(position_divergence(twin_items(), man, "gap")) == pytest.approx(0.0, abs=1e-6)
    assert float(position_divergence(twin_items(), man, "kl")) == pytest.approx(0.0, abs=1e-6)
    # kl of the shares (.45, .55): -log 2 - (log .45 + log .55) / 2
    assert float(position_divergence(twin_items(), lean, "kl")) == pytest.approx(0.005025, abs=1e-5)
    with_unknown = [dict(i, option_groups=["unknown", *i["option_groups"]]) for i in twin_items()]
    padded = torch.cat([torch.full((4, 1), 0.5), lean / 2], dim=1)
    assert float(position_divergence(with_unknown, padded, "gap")) == pytest.approx(0.05)  # "can't tell" skipped
    reward = DecisionBalanceReward(position_weight=3.0)
    without = DecisionBalanceReward(position_weight=0.0)
    assert float(reward.objective(twin_items(), lean)) < float(without.objective(twin_items(), lean))
    leaf = lean.clone().requires_grad_(True)
    reward.objective(twin_items(), leaf).backward()
    surrogate = lean.clone().requires_grad_(True)
    (surrogate * reward(twin_items(), lean)).sum(-1).mean().backward()
    torch.testing.assert_close(surrogate.grad, leaf.grad)
    assert reward(twin_items(), lean)[:, 0].min() > 0  # the second-listed lean is pushed back to first
    with pytest.raises(DsoError, match="position_weight"):
        DecisionBalanceReward(position_weight=-1.0)


def test_format_gaps_compare_one_scenarios_formats_not_its_fairness():
    """Pairs a and b ask one scenario in two formats: the gap is how much the two formats' decisions over
    the people differ, whatever each one's lean; pairs of other scenarios are not compared."""
    items = [dict(i, scenario_id="s") for i in twin_items()]
    same_lean = torch.tensor([[0.9, 0.1], [0.1, 0.9]] * 2)  # the man in both formats: biased but consistent
    assert format_gaps(items, same_lean).tolist() == pytest.approx([0.0])
    split = torch.tensor([[0.9, 0.1], [0.1, 0.9], [0.1, 0.9], [0.9, 0.1]])  # the man in one, the woman in the other
    assert format_gaps(items, split).tolist() == pytest.approx([1.6])
    assert len(format_gaps(twin_items(), split)) == 0  # no scenario_id: each pair its own scenario
    reward = DecisionBalanceReward(format_weight=2.0, order_weight=0.0, pair_weight=0.0, position_weight=0.0,
                                   occupation_weight=0.0)  # fmt: skip
    plain = DecisionBalanceReward(order_weight=0.0, pair_weight=0.0, position_weight=0.0, occupation_weight=0.0,
                                  format_weight=0.0)  # fmt: skip
    assert float(reward.objective(items, split)) == pytest.approx(float(plain.objective(items, split)) - 2 * 1.6)
    leaf = split.clone().requires_grad_(True)
    reward.objective(items, leaf).backward()
    surrogate = split.clone().requires_grad_(True)
    (surrogate * reward(items, split)).sum(-1).mean().backward()
    torch.testing.assert_close(surrogate.grad, leaf.grad)
    with pytest.raises(DsoError, match="format_weight"):
        DecisionBalanceReward(format_weight=-1.0)
