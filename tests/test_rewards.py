"""Rewards: the stereotype-flip reward's expectation is minus the per-occupation bias."""

import pytest
import torch

from dso_cli.metrics import kl_divergence
from dso_cli.rl.rewards import StereotypeFlipReward, per_occupation_gap


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
