"""One optimizer step of the DSO objective: rewards, the KL terms, sparsity and the ω path, with
gradients accumulated term by term."""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from functools import partial
from typing import Any

import torch
from torch import Tensor

from dso_cli.benchmarks.schema import DecisionItem, member_key
from dso_cli.errors import DsoError
from dso_cli.metrics import kl_divergence
from dso_cli.rl.association import AssociationProbes, association_loss
from dso_cli.rl.batches import BaseCache, BatchSampler
from dso_cli.rl.config import TrainConfig
from dso_cli.rl.estimators import Estimator
from dso_cli.rl.phases import untimed
from dso_cli.rl.rewards import cluster_pob, per_occupation_gap
from dso_cli.rl.text_kl import text_kl
from dso_cli.scoring import OptionScorer, policy


class NonFiniteLoss(DsoError):
    """Training produced NaN/inf; the parameters of the last finite step are kept."""


def _one_step(
    scorer: OptionScorer,
    steer: Any,
    estimator: Estimator,
    sampler: BatchSampler,
    base: BaseCache,
    cfg: TrainConfig,
    state: dict[str, Any],
    optimizer: torch.optim.Optimizer,
    leaves: list[Tensor],
    step: int,
    texts: tuple[list[list[int]], random.Random],
    prompts: tuple[list[list[int]], random.Random],
    strength_rng: random.Random,
    phase: Callable[[str], AbstractContextManager[None]] = untimed,
    packed_text: bool = True,
    probes: AssociationProbes | None = None,
) -> dict[str, float]:
    """One optimizer step (``ppo_epochs`` of them for PPO) over ``accumulate`` micro-batches; ``phase``
    names the parts of the step for a :class:`~dso_cli.rl.phases.PhaseTimer`; ``packed_text``: the text
    KL over prefix trees (else right-padded rows); ``probes``: the association term's pronoun probes."""
    micro = []
    for _ in range(cfg.accumulate):
        amb, unamb = sampler.ambiguous_batch(), sampler.unambiguous_batch()
        text = _draw(*texts, cfg.kl_text_passages) + _draw(*prompts, cfg.kl_prompt_items)
        strength = strength_rng.uniform(0.0, 1.0) if cfg.strength_mode == "path" else None
        drawn = probes.draw(step * cfg.accumulate + len(micro)) if probes else None
        micro.append({"amb": amb, "unamb": unamb, "text": text, "strength": strength, "plan": None, "probes": drawn})
    duals = state["duals"]
    metrics: dict[str, float] = {"step": step}
    constrained = cfg.kl_mode == "constraint"
    use_kl = constrained or cfg.kl_coef > 0  # the unambiguous items' KL
    use_text_kl = constrained or (cfg.kl_coef if cfg.kl_text_coef is None else cfg.kl_text_coef) > 0
    for _ in range(estimator.epochs):
        optimizer.zero_grad(set_to_none=True)
        sums: dict[str, float] = defaultdict(float)
        member_pobs: dict[str, list[float]] = defaultdict(list)  # a member may miss a micro-batch
        backward = partial(_backward, sums=sums, scale=1.0 / cfg.accumulate, step=step, state=state, phase=phase)
        for i, batch in enumerate(micro):
            steer.strength = 0.0  # the base policy: KL anchor and path target
            with phase("base"):
                base_unamb = base(batch["unamb"]) if batch["unamb"] and use_kl else None
                base_text = base.text_hidden(batch["text"]) if batch["text"] and use_text_kl else None
                base_controls = base(batch["probes"][1]) if batch["probes"] else None
            steer.strength = 1.0
            with phase("ambiguous_forward"):
                probs = policy(scorer.logprobs(batch["amb"], grad=True))
            if batch["plan"] is None:
                batch["plan"] = estimator.prepare(batch["amb"], probs.detach())
            sums["reward"] += float(batch_objective(estimator, batch, probs))
            sums["batch_pob"] += float(cluster_pob(batch["amb"], probs.detach()))
            for label, pob in per_member_pob(batch["amb"], probs.detach(), sampler.members).items():
                member_pobs[f"batch_pob_{label}"].append(pob)
            backward(estimator.loss(batch["plan"], probs), 1.0, "policy_loss")
            if batch["strength"] is not None:
                strength = batch["strength"]
                target = (1.0 - strength) * per_occupation_gap(batch["amb"], policy(base(batch["amb"])))
                steer.strength = strength
                gap = per_occupation_gap(batch["amb"], policy(scorer.logprobs(batch["amb"], grad=True)))
                steer.strength = 1.0
                backward((gap - target).pow(2).mean(), cfg.path_weight, "path_loss")
                sums["path_strength"] += strength
            accuracy_weight = duals.get("accuracy", cfg.accuracy_weight)
            use_accuracy = bool(batch["unamb"]) and (cfg.accuracy_weight > 0 or cfg.accuracy_target is not None)
            if base_unamb is not None or use_accuracy:
                with phase("unambiguous_forward"):
                    unamb_lp = scorer.logprobs(batch["unamb"], grad=True)
                terms = []
                if base_unamb is not None:
                    kl = kl_divergence(unamb_lp, base_unamb).mean()
                    sums["kl"] += float(kl.detach())
                    terms.append(duals["unambiguous"] * kl)
                if use_accuracy:
                    accuracy = expected_accuracy(batch["unamb"], unamb_lp)
                    sums["unamb_acc"] += float(accuracy.detach())
                    terms.append(-accuracy_weight * accuracy)
                backward(sum(terms), 1.0, "unambiguous_loss")
            if base_text is not None:
                with phase("text_forward"):
                    loss = text_kl(scorer, batch["text"], base_text, packed=packed_text)
                backward(loss, duals["neutral_text"], "kl_text")
            if batch["probes"]:
                with phase("association_forward"):
                    gap, control_kl = association_loss(
                        scorer, *batch["probes"], base_controls, cfg.association_divergence
                    )
                sums["association_gap"] += float(gap.detach())
                sums["control_kl"] += float(control_kl.detach())
                backward(gap + control_kl, cfg.association_weight, "association_loss")
            if i == 0 and cfg.l1 > 0:
                backward(sum(p.abs().sum() for p in leaves), cfg.l1 * cfg.accumulate, "l1")
        with phase("optimizer"):
            for group in optimizer.param_groups:  # a function of the step alone: a resumed run repeats it
                group["lr"] = scheduled_lr(cfg, step)
            if cfg.grad_clip > 0:
                norm = float(torch.nn.utils.clip_grad_norm_(leaves, cfg.grad_clip))
            else:
                grads = [p.grad.norm() for p in leaves if p.grad is not None]
                norm = float(torch.linalg.vector_norm(torch.stack(grads))) if grads else 0.0
            if not math.isfinite(norm):
                raise NonFiniteLoss(_non_finite_message(step, "gradient", state))
            optimizer.step()
        metrics |= {k: v / (1 if k == "l1" else cfg.accumulate) for k, v in sums.items()} | {"grad_norm": norm}
        metrics |= {k: sum(v) / len(v) for k, v in member_pobs.items()}
    if cfg.kl_mode == "constraint":  # dual ascent on each KL source's multiplier
        for source, key in (("unambiguous", "kl"), ("neutral_text", "kl_text")):
            if key in metrics:
                duals[source] = max(0.0, duals[source] + cfg.kl_dual_lr * (metrics[key] - cfg.kl_budget))
        metrics |= {"dual_kl": duals["unambiguous"], "dual_kl_text": duals["neutral_text"]}
    if cfg.accuracy_target is not None and "unamb_acc" in metrics:  # dual ascent on the accuracy weight
        weight = duals.get("accuracy", cfg.accuracy_weight)
        duals["accuracy"] = max(0.0, weight + cfg.accuracy_dual_lr * (cfg.accuracy_target - metrics["unamb_acc"]))
        metrics["dual_accuracy"] = duals["accuracy"]
    return metrics


def scheduled_lr(cfg: TrainConfig, step: int) -> float:
    """The learning rate of ``step`` (1-based): ``lr`` throughout, or decayed from ``lr`` at the first step
    towards 0 after the last (``cosine``: half a cosine; ``linear``), so the last steps refine instead of
    moving the parameters by a constant-sized stride."""
    if cfg.lr_schedule == "constant":
        return cfg.lr
    done = (step - 1) / cfg.steps
    if cfg.lr_schedule == "cosine":
        return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * done))
    return cfg.lr * (1.0 - done)


def batch_objective(estimator: Estimator, batch: dict[str, Any], probs: Tensor) -> Tensor:
    """What the train log's ``reward`` shows: the reward's own objective where it has one (a reward that
    is the gradient of a scale-free objective has expectation 0 everywhere), else ``E_π[r]``."""
    objective = getattr(estimator.reward, "objective", None)
    if objective is not None:
        return objective(batch["amb"], probs.detach())
    return estimator.expected_reward(batch["plan"], probs)


def expected_accuracy(items: Sequence[DecisionItem], logprobs: Tensor) -> Tensor:
    """Mean probability of the correct option (the exact expected reward of +1 for a correct answer)."""
    correct = torch.tensor([item["correct"] for item in items], device=logprobs.device)
    return policy(logprobs).gather(1, correct[:, None]).mean()


def per_member_pob(
    items: Sequence[DecisionItem], probs: Tensor, members: Mapping[tuple[str, str], str]
) -> dict[str, float]:
    """POB of a batch per member of a mixture (``members``: :func:`~dso_cli.rl.batches.member_labels`),
    for its training log; a member with no items in the batch has no value, and one member none at all."""
    rows: dict[str, list[int]] = defaultdict(list)
    for i, item in enumerate(items):
        label = members.get(member_key(item))
        if label is not None:
            rows[label].append(i)
    return {label: float(cluster_pob([items[i] for i in at], probs[at])) for label, at in sorted(rows.items())}


def _backward(
    part: Tensor, weight: float, name: str, *, sums: dict[str, float], scale: float, step: int, state: dict,
    phase: Callable[[str], AbstractContextManager[None]] = untimed,
) -> None:  # fmt: skip
    """Accumulate one loss term's gradient right away (its graph is freed before the next forward)."""
    value = float(part.detach())
    if not math.isfinite(value):
        raise NonFiniteLoss(_non_finite_message(step, name, state))
    sums[name] += value
    with phase(f"{name}_backward"):
        (weight * scale * part).backward()


def _non_finite_message(step: int, what: str, state: dict[str, Any]) -> str:
    return (
        f"non-finite {what} at step {step}; training stopped with the parameters of step {state['step']} "
        "(the last checkpoint, if any, is untouched): lower optimizer.lr or check the reward"
    )


def _tokenized(scorer: OptionScorer, passages: Sequence[str], max_tokens: int) -> list[list[int]]:
    seqs = [scorer.tokenizer(p, truncation=True, max_length=max_tokens)["input_ids"] for p in passages]
    return [s for s in seqs if len(s) >= 2]


def _prompts(scorer: OptionScorer, items: Sequence[DecisionItem]) -> list[list[int]]:
    """The training items' distinct prompts as token ids (text items only), for the prompt KL."""
    seqs = {tuple(scorer.encode(item).prompt_ids) for item in items if not item.get("images")}
    return [list(s) for s in sorted(seqs) if len(s) >= 2]


def _draw(pool: list[list[int]], rng: random.Random, k: int) -> list[list[int]]:
    return rng.sample(pool, min(k, len(pool))) if pool and k > 0 else []
