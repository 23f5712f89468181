"""Policy-gradient estimators of ∇ E_{y∼π}[r(y, x)] over a batch of decision items.

Every estimator sees the same reward callables (``reward(items, probs) -> [n, k]``, one value per
option) and turns them into a surrogate loss whose gradient estimates −∇E[r]:

- ``exact``: the expectation over the enumerable options in closed form, ``−Σ_k π_k r_k`` (no
  sampling noise; DESIGN §1.3).
- ``reinforce``: one sampled option per item, ``−(r_y − b) log π_y`` with ``b`` the mean reward of the
  batch's other items (leaving the item's own sample out keeps the estimate unbiased).
- ``rloo``: ``samples`` options per item, each baselined by the mean reward of the item's other samples.
- ``ppo``: ``samples`` options per item drawn from the policy at the start of the batch; ``epochs``
  updates on the clipped surrogate ``min(ρA, clip(ρ, 1±ε)A)`` with ``ρ = π_y / π_old,y`` and
  leave-one-out advantages.

The trainer calls :meth:`Estimator.prepare` once per batch with the detached policy (it returns the
batch's plan: rewards, samples, advantages) and :meth:`Estimator.loss` with that plan once per update
(``epochs`` updates for PPO, one for the others).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from dso_cli.benchmarks.schema import DecisionItem
from dso_cli.errors import DsoError
from dso_cli.rl.rewards import Reward

ESTIMATORS = ("exact", "reinforce", "rloo", "ppo")


class Estimator:
    """Exact expectation; the sampled estimators below override :meth:`prepare`/:meth:`loss`."""

    epochs = 1

    def __init__(self, reward: Reward, generator: torch.Generator) -> None:
        self.reward = reward
        self.generator = generator

    def prepare(self, items: Sequence[DecisionItem], probs: Tensor) -> dict[str, Tensor]:
        """This batch's plan from the detached policy: its rewards (and samples, advantages)."""
        return {"rewards": self.reward(items, probs.detach())}

    @staticmethod
    def expected_reward(plan: Mapping[str, Tensor], probs: Tensor) -> Tensor:
        """``E_π[r]`` over the batch (for logging; the same quantity for every estimator)."""
        return (probs.detach() * plan["rewards"].to(probs.device)).sum(-1).mean()

    def loss(self, plan: Mapping[str, Tensor], probs: Tensor) -> Tensor:
        return -(probs * plan["rewards"].to(probs.device)).sum(-1).mean()

    def _sample(self, probs: Tensor, n: int) -> Tensor:
        """``[items, n]`` option indices drawn from ``probs`` (on the CPU generator, for reproducibility)."""
        return torch.multinomial(probs.detach().float().cpu(), n, replacement=True, generator=self.generator)


def _picked(probs: Tensor, choice: Tensor) -> Tensor:
    return probs.gather(1, choice.to(probs.device))


class Reinforce(Estimator):
    def prepare(self, items: Sequence[DecisionItem], probs: Tensor) -> dict[str, Tensor]:
        plan = super().prepare(items, probs)
        choice = self._sample(probs, 1)
        picked = plan["rewards"].cpu().gather(1, choice)
        n = picked.shape[0]
        others = (picked.sum() - picked) / (n - 1) if n > 1 else torch.zeros_like(picked)
        return plan | {"choice": choice, "advantage": picked - others}

    def loss(self, plan: Mapping[str, Tensor], probs: Tensor) -> Tensor:
        logp = _picked(probs, plan["choice"]).clamp_min(1e-30).log()
        return -(plan["advantage"].to(probs.device) * logp).mean()


class LeaveOneOut(Reinforce):
    def __init__(self, reward: Reward, generator: torch.Generator, samples: int = 4) -> None:
        super().__init__(reward, generator)
        if samples < 2:
            raise DsoError(f"optimizer.samples must be at least 2 for a leave-one-out baseline, not {samples}")
        self.samples = samples

    def prepare(self, items: Sequence[DecisionItem], probs: Tensor) -> dict[str, Tensor]:
        plan = Estimator.prepare(self, items, probs)
        choice = self._sample(probs, self.samples)
        picked = plan["rewards"].cpu().gather(1, choice)
        others = (picked.sum(1, keepdim=True) - picked) / (self.samples - 1)
        return plan | {"choice": choice, "advantage": picked - others}


class PPO(LeaveOneOut):
    def __init__(
        self, reward: Reward, generator: torch.Generator, samples: int = 4, epochs: int = 4, clip: float = 0.2
    ) -> None:
        super().__init__(reward, generator, samples)
        if epochs < 1 or clip <= 0:
            raise DsoError(f"optimizer.ppo_epochs must be >= 1 and optimizer.ppo_clip > 0 (got {epochs}, {clip})")
        self.epochs, self.clip = epochs, clip

    def prepare(self, items: Sequence[DecisionItem], probs: Tensor) -> dict[str, Tensor]:
        plan = super().prepare(items, probs)
        return plan | {"old": _picked(probs.detach().cpu(), plan["choice"]).clamp_min(1e-30)}

    def loss(self, plan: Mapping[str, Tensor], probs: Tensor) -> Tensor:
        ratio = _picked(probs, plan["choice"]) / plan["old"].to(probs.device)
        advantage = plan["advantage"].to(probs.device)
        clipped = ratio.clamp(1.0 - self.clip, 1.0 + self.clip)
        return -torch.minimum(ratio * advantage, clipped * advantage).mean()


def make_estimator(
    name: str,
    reward: Reward,
    generator: torch.Generator,
    *,
    samples: int = 4,
    ppo_epochs: int = 4,
    ppo_clip: float = 0.2,
) -> Estimator:
    if name == "exact":
        return Estimator(reward, generator)
    if name == "reinforce":
        return Reinforce(reward, generator)
    if name == "rloo":
        return LeaveOneOut(reward, generator, samples)
    if name == "ppo":
        return PPO(reward, generator, samples, ppo_epochs, ppo_clip)
    raise DsoError(f"optimizer.estimator={name!r} is not available (choose from {', '.join(ESTIMATORS)})")
