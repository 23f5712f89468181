"""The DSO training loop: policy-gradient debiasing of the affine steering parameters.

Each step draws a batch of ambiguous items (a few occupations, both person orders of each template)
and a batch of unambiguous items, and minimises

    − E_{x, y∼π_ω=1}[r(y, x)]                      the paper's objective (exact estimator)
    + β · KL(π_ω=1 ‖ π_base) on unambiguous items   capability protection
    + λ · (‖a‖₁ + ‖b‖₁)                            sparsity
    + μ · E_ω[(G_o(ω) − (1 − ω) G_o(0))²]         the ω path (``omega=path`` only)

where ``G_o(ω)`` is the signed per-occupation gap ``P(pro|o) − P(anti|o)`` at strength ω.
``omega=fixed`` trains at ω = 1 only, as the paper does; the strengths in between are then
unconstrained, and with a large step size they can end up *more* biased than the base model.
``omega=path`` also scores each batch at a random ω ∈ (0, 1) and pulls every occupation's gap there
towards the straight line from its base gap (ω = 0) to zero (ω = 1), so that bias falls with ω in
proportion. Measured trade-offs of the two modes are in the README.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from dso_cli.errors import DsoError
from dso_cli.metrics import kl_divergence
from dso_cli.rl.rewards import Reward, per_occupation_gap
from dso_cli.scoring import OptionScorer, policy
from dso_cli.steering.affine import apply_affine

Item = Mapping[str, Any]


@dataclass
class TrainConfig:
    steps: int = 30
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    occupations_per_batch: int = 4
    pairs_per_occupation: int = 2
    unambiguous_per_batch: int = 8
    kl_coef: float = 1.0
    l1: float = 0.0
    omega: str = "fixed"
    path_weight: float = 1.0
    grad_clip: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name, spec in self.__dataclass_fields__.items():
            kind = {"int": int, "float": float}.get(str(spec.type))
            if kind is not None:
                value = getattr(self, name)
                try:
                    setattr(self, name, kind(value))
                except (TypeError, ValueError):
                    raise DsoError(f"optimizer.{name}={value!r} is not a number") from None
        if self.omega not in ("fixed", "path"):
            raise DsoError(f"optimizer.omega must be 'fixed' or 'path', not {self.omega!r}")
        if self.steps < 1:
            raise DsoError(f"optimizer.steps must be at least 1, not {self.steps}")


class BatchSampler:
    """Stratified batches: ``occupations_per_batch`` occupations, whole counterbalanced pairs of each."""

    def __init__(self, items: Sequence[Item], cfg: TrainConfig, rng: random.Random) -> None:
        self.rng = rng
        self.cfg = cfg
        pairs: dict[str, dict[str, list[Item]]] = defaultdict(lambda: defaultdict(list))
        self.unambiguous = [item for item in items if not item["ambiguous"]]
        for item in items:
            if item["ambiguous"]:
                pairs[item["occupation"]][item["pair_id"]].append(item)
        self.pairs = {occ: list(by_id.values()) for occ, by_id in pairs.items()}
        if not self.pairs:
            raise DsoError("the training split has no ambiguous items to debias")
        self._queue: list[str] = []

    def ambiguous_batch(self) -> list[Item]:
        batch = []
        for _ in range(min(self.cfg.occupations_per_batch, len(self.pairs))):
            if not self._queue:
                self._queue = sorted(self.pairs)
                self.rng.shuffle(self._queue)
            occ = self._queue.pop()
            for pair in self.rng.sample(self.pairs[occ], min(self.cfg.pairs_per_occupation, len(self.pairs[occ]))):
                batch.extend(pair)
        return batch

    def unambiguous_batch(self) -> list[Item]:
        k = min(self.cfg.unambiguous_per_batch, len(self.unambiguous))
        return self.rng.sample(self.unambiguous, k)


class BaseCache:
    """Option log-probabilities of the unsteered model, computed once per item and reused."""

    def __init__(self, scorer: OptionScorer) -> None:
        self.scorer = scorer
        self._lp: dict[str, Tensor] = {}

    def __call__(self, items: Sequence[Item]) -> Tensor:
        todo = [item for item in items if item["id"] not in self._lp]
        if todo:
            for item, row in zip(todo, self.scorer.logprobs(todo).detach(), strict=True):
                self._lp[item["id"]] = row
        width = max(self._lp[item["id"]].shape[0] for item in items)
        rows = [
            torch.nn.functional.pad(self._lp[i["id"]], (0, width - self._lp[i["id"]].shape[0]), value=-math.inf)
            for i in items
        ]
        return torch.stack(rows)


def train_dso(
    scorer: OptionScorer,
    params: dict[str, Tensor],
    items: Sequence[Item],
    reward: Reward,
    cfg: TrainConfig,
    log: Callable[[dict[str, float]], None] = lambda row: None,
) -> dict[str, float]:
    """Optimise ``params`` in place; returns the last step's metrics."""
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    sampler = BatchSampler(items, cfg, rng)
    omega_rng = random.Random(cfg.seed + 1)  # separate stream: both modes see the same batches
    base = BaseCache(scorer)
    leaves = list(params.values())
    optimizer = torch.optim.Adam(leaves, lr=cfg.lr, betas=cfg.betas)
    metrics: dict[str, float] = {}
    bar = tqdm(range(1, cfg.steps + 1), desc="dso train", unit="step")
    with apply_affine(scorer.model, params, 1.0) as steer:
        for step in bar:
            amb, unamb = sampler.ambiguous_batch(), sampler.unambiguous_batch()
            steer.strength = 0.0  # the base policy, for the path target and the KL anchor
            base_amb = base(amb) if cfg.omega == "path" else None
            base_unamb = base(unamb) if unamb and cfg.kl_coef > 0 else None
            optimizer.zero_grad(set_to_none=True)

            steer.strength = 1.0
            probs = policy(scorer.logprobs(amb, grad=True))
            expected_reward = (probs * reward(amb, probs)).sum(-1).mean()
            (-expected_reward).backward()
            gap1 = per_occupation_gap(amb, probs.detach())
            metrics = {"step": step, "reward": expected_reward.item(), "batch_pob": gap1.abs().mean().item()}

            if cfg.omega == "path":
                omega = omega_rng.uniform(0.0, 1.0)
                steer.strength = omega
                gap = per_occupation_gap(amb, policy(scorer.logprobs(amb, grad=True)))
                target = (1.0 - omega) * per_occupation_gap(amb, policy(base_amb))
                path_loss = (gap - target).pow(2).mean()
                (cfg.path_weight * path_loss).backward()
                metrics |= {"path_omega": omega, "path_loss": path_loss.item()}

            if unamb and cfg.kl_coef > 0:
                steer.strength = 1.0
                kl = kl_divergence(scorer.logprobs(unamb, grad=True), base_unamb).mean()
                (cfg.kl_coef * kl).backward()
                metrics["kl"] = kl.item()

            if cfg.l1 > 0:
                l1 = sum(p.abs().sum() for p in leaves)
                (cfg.l1 * l1).backward()
                metrics["l1"] = l1.item()
            if cfg.grad_clip > 0:
                metrics["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(leaves, cfg.grad_clip))
            optimizer.step()
            log(metrics)
            bar.set_postfix(
                reward=f"{metrics['reward']:.3f}", pob=f"{metrics['batch_pob']:.3f}", kl=f"{metrics.get('kl', 0):.4f}"
            )
    return metrics
