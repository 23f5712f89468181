"""Policy-gradient estimators on a toy policy with known probabilities: the exact gradient is the true
gradient, the sampled estimators are unbiased for it, and abs_gap's reward is its objective's derivative."""

import pytest
import torch

from dso_cli.benchmarks.occupation import build
from dso_cli.rl.estimators import make_estimator
from dso_cli.rl.rewards import AbsGapReward, StereotypeFlipReward, per_occupation_gap


@pytest.fixture(scope="module")
def items():
    test = build(test_pairs_per_occupation=2)["test"].to_list()
    amb = [i for i in test if i["ambiguous"]]
    keep = sorted({i["cluster"] for i in amb})[:4]
    return [i for i in amb if i["cluster"] in keep]  # 4 occupations x 2 pairs x 2 orders


def toy_logits(items, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(len(items), 2, generator=g) * 1.5).double()


def gradient(estimator_name, reward, items, logits, seed=0, **kw):
    theta = logits.clone().requires_grad_(True)
    est = make_estimator(estimator_name, reward, torch.Generator().manual_seed(seed), **kw)
    probs = torch.softmax(theta, -1)
    plan = est.prepare(items, probs.detach())
    est.loss(plan, probs).backward()
    return theta.grad


@pytest.mark.parametrize("reward", [StereotypeFlipReward(), AbsGapReward()])
def test_exact_gradient_matches_finite_differences(items, reward):
    logits = toy_logits(items)
    rewards = reward(items, torch.softmax(logits, -1))  # fixed at the current policy, as in a step

    def objective(theta):
        return (torch.softmax(theta, -1) * rewards).sum(-1).mean()

    grad = gradient("exact", reward, items, logits)
    eps = 1e-6
    numeric = torch.zeros_like(logits)
    for i in range(logits.shape[0]):
        for k in range(2):
            bump = torch.zeros_like(logits)
            bump[i, k] = eps
            numeric[i, k] = (objective(logits + bump) - objective(logits - bump)) / (2 * eps)
    torch.testing.assert_close(-grad, numeric, atol=1e-8, rtol=1e-6)


def test_abs_gap_reward_is_the_derivative_of_its_objective(items):
    logits = toy_logits(items, seed=1)
    theta = logits.clone().requires_grad_(True)
    (-per_occupation_gap(items, torch.softmax(theta, -1)).abs().mean()).backward()
    torch.testing.assert_close(-gradient("exact", AbsGapReward(), items, logits), theta.grad, atol=1e-12, rtol=1e-9)
    # with equally many items per occupation it is exactly the stereotype-flip reward
    probs = torch.softmax(logits, -1)
    torch.testing.assert_close(AbsGapReward()(items, probs), StereotypeFlipReward()(items, probs), atol=1e-12, rtol=0)
    uneven = items[2:]  # one occupation loses a pair: now each occupation weighs the same, not each item
    assert not torch.allclose(AbsGapReward()(uneven, probs[2:]), StereotypeFlipReward()(uneven, probs[2:]))


@pytest.mark.parametrize("name", ["reinforce", "rloo", "ppo"])
def test_sampled_estimators_are_unbiased_for_the_exact_gradient(items, name):
    logits = toy_logits(items, seed=2)
    reward = StereotypeFlipReward()
    exact = gradient("exact", reward, items, logits)
    draws = torch.stack([gradient(name, reward, items, logits, seed=s, samples=4) for s in range(3000)])
    mean, se = draws.mean(0), draws.std(0) / 3000**0.5
    assert ((mean - exact).abs() <= 4 * se + 1e-9).float().mean() >= 0.97  # per coordinate, 4 SE
    assert torch.nn.functional.cosine_similarity(mean.flatten(), exact.flatten(), dim=0) > 0.98


def test_ppo_first_update_is_the_leave_one_out_gradient(items):
    """At the batch's own policy the ratio is 1 and no clipping applies: PPO's first step is RLOO's."""
    logits, reward = toy_logits(items, seed=3), StereotypeFlipReward()
    torch.testing.assert_close(
        gradient("ppo", reward, items, logits, seed=7, samples=3),
        gradient("rloo", reward, items, logits, seed=7, samples=3),
        atol=1e-12,
        rtol=1e-9,
    )


def test_bad_estimator_settings_fail_clearly():
    from dso_cli.errors import DsoError

    with pytest.raises(DsoError, match="not available"):
        make_estimator("a2c", StereotypeFlipReward(), torch.Generator())
    with pytest.raises(DsoError, match="at least 2"):
        make_estimator("rloo", StereotypeFlipReward(), torch.Generator(), samples=1)
