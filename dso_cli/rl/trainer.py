"""The DSO training loop: policy-gradient debiasing of the affine steering parameters.

Each step draws a batch of ambiguous items (a few occupations, both person orders of each template),
a batch of unambiguous items and a few neutral passages and training prompts, and minimises

    − E_{x, y∼π_ω=1}[r(y, x)]                          the paper's objective (exact estimator)
    − γ · E_unamb[π_ω=1(correct)]                      stay correct where the prompt gives evidence
    + β_text · KL_tok(p_ω=1 ‖ p_base) on text/prompts  full-vocabulary next-token KL, per token
    + β · KL(π_ω=1 ‖ π_base) on unambiguous items       the two options' KL (off by default)
    + λ · (‖a‖₁ + ‖b‖₁)                                sparsity
    + μ · E_ω[(G_o(ω) − (1 − ω) G_o(0))²]             the ω path (``omega=path`` only)

where ``G_o(ω)`` is the signed per-occupation gap ``P(pro|o) − P(anti|o)`` at strength ω.
``omega=fixed`` trains at ω = 1 only, as the paper does; the strengths in between are then
unconstrained, and with a large step size they can end up *more* biased than the base model.
``omega=path`` also scores each batch at a random ω ∈ (0, 1) and pulls every occupation's gap there
towards the straight line from its base gap (ω = 0) to zero (ω = 1), so that bias falls with ω in
proportion. Measured trade-offs of the modes and of the protecting terms are in the README.
"""

from __future__ import annotations

import math
import random
import signal
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from dso_cli.errors import DsoError
from dso_cli.metrics import kl_divergence
from dso_cli.rl.checkpoint import load_checkpoint, save_checkpoint
from dso_cli.rl.estimators import Estimator, make_estimator
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
    accumulate: int = 1  # micro-batches per optimizer step
    estimator: str = "exact"
    samples: int = 4  # rloo / ppo: sampled options per item
    ppo_epochs: int = 4
    ppo_clip: float = 0.2
    kl_mode: str = "penalty"  # penalty: fixed kl_coef; constraint: KL <= kl_budget by dual ascent
    kl_coef: float = 1.0  # beta (penalty) or the initial Lagrange multiplier (constraint)
    kl_budget: float = 0.05  # epsilon, per KL source
    kl_dual_lr: float = 1.0
    kl_text_passages: int = 0  # neutral-text passages per step in the KL (0: unambiguous items only)
    kl_text_tokens: int = 64
    kl_text_coef: float | None = None  # penalty weight of the text KL (None: kl_coef); constraint: its start
    kl_prompt_items: int = 0  # training items per step whose prompts join the text KL (every prompt token)
    accuracy_weight: float = 0.0  # reward for the correct option of unambiguous items (expected accuracy)
    l1: float = 0.0
    omega: str = "fixed"
    path_weight: float = 1.0
    grad_clip: float = 1.0
    eval_every: int = 0  # early stopping: val POB every N steps (0: off)
    patience: int = 3  # evaluations without improvement before stopping
    val_kl_budget: bool = True  # early stopping keeps only steps whose val-text KL is within kl_budget
    checkpoint_every: int = 10
    autocast: bool = True  # bf16 autocast on CUDA
    seed: int = 0

    def __post_init__(self) -> None:
        for name, spec in self.__dataclass_fields__.items():
            kind = {"int": int, "float": float, "float | None": float}.get(str(spec.type))
            value = getattr(self, name)
            if kind is not None and value is not None:
                setattr(self, name, _number(f"optimizer.{name}", value, kind))
        if not (isinstance(self.betas, (tuple, list)) and len(self.betas) == 2):
            raise DsoError(f"optimizer.betas={self.betas!r} must be two numbers in [0, 1)")
        self.betas = tuple(_number("optimizer.betas", b, float) for b in self.betas)  # type: ignore[assignment]
        if not all(0 <= b < 1 for b in self.betas):
            raise DsoError(f"optimizer.betas={list(self.betas)} must be two numbers in [0, 1)")
        from dso_cli.rl.estimators import ESTIMATORS

        choices = {"omega": ("fixed", "path"), "kl_mode": ("penalty", "constraint"), "estimator": ESTIMATORS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise DsoError(f"optimizer.{name} must be one of {', '.join(allowed)}, not {getattr(self, name)!r}")
        for name in ("steps", "accumulate", "occupations_per_batch", "pairs_per_occupation", "samples",
                     "ppo_epochs", "kl_text_tokens", "checkpoint_every", "patience"):  # fmt: skip
            if getattr(self, name) < 1:
                raise DsoError(f"optimizer.{name} must be at least 1, not {getattr(self, name)}")
        for name in ("lr", "kl_budget", "ppo_clip"):
            if not getattr(self, name) > 0:
                raise DsoError(f"optimizer.{name} must be greater than 0, not {getattr(self, name)}")
        for name in (
            "unambiguous_per_batch",
            "kl_coef",
            "kl_dual_lr",
            "kl_text_passages",
            "kl_text_coef",
            "kl_prompt_items",
            "accuracy_weight",
            "l1",
            "path_weight",
            "grad_clip",
            "eval_every",
            "seed",
        ):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise DsoError(f"optimizer.{name} must be at least 0, not {value}")


def _number(key: str, value: Any, kind: type) -> int | float:
    """``value`` as ``kind``, finite; an int must be integral (``steps=2.7`` is an error, not 2)."""
    if isinstance(value, bool):
        raise DsoError(f"{key}={value!r} is not a number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise DsoError(f"{key}={value!r} is not a number") from None
    if not math.isfinite(number):
        raise DsoError(f"{key}={value!r} must be a finite number")
    if kind is int:
        if not number.is_integer():
            raise DsoError(f"{key}={value!r} must be a whole number")
        return int(number)
    return number


class BatchSampler:
    """Stratified batches: ``occupations_per_batch`` clusters (occupations), whole counterbalanced pairs
    of each; with several benchmarks (a mixture) the clusters are taken from each benchmark in turn."""

    def __init__(self, items: Sequence[Item], cfg: TrainConfig, rng: random.Random) -> None:
        self.rng = rng
        self.cfg = cfg
        pairs: dict[str, dict[str, list[Item]]] = defaultdict(lambda: defaultdict(list))
        benchmark_of: dict[str, str] = {}
        self.unambiguous = [item for item in items if not item["ambiguous"]]
        for item in items:
            if item["ambiguous"]:
                pairs[item["occupation"]][item["pair_id"]].append(item)
                benchmark_of[item["occupation"]] = item["benchmark"]
        self.pairs = {occ: list(by_id.values()) for occ, by_id in pairs.items()}
        if not self.pairs:
            raise DsoError("the training split has no ambiguous items to debias")
        self.benchmarks = sorted(set(benchmark_of.values()))
        self.clusters = {b: sorted(o for o, ob in benchmark_of.items() if ob == b) for b in self.benchmarks}
        self._queues: dict[str, list[str]] = {b: [] for b in self.benchmarks}
        self._turn = 0

    def ambiguous_batch(self) -> list[Item]:
        batch = []
        for _ in range(min(self.cfg.occupations_per_batch, len(self.pairs))):
            bench = self.benchmarks[self._turn % len(self.benchmarks)]
            self._turn += 1
            queue = self._queues[bench]
            if not queue:
                queue[:] = self.clusters[bench]
                self.rng.shuffle(queue)
            occ = queue.pop()
            for pair in self.rng.sample(self.pairs[occ], min(self.cfg.pairs_per_occupation, len(self.pairs[occ]))):
                batch.extend(pair)
        return batch

    def unambiguous_batch(self) -> list[Item]:
        k = min(self.cfg.unambiguous_per_batch, len(self.unambiguous))
        return self.rng.sample(self.unambiguous, k)

    def state(self) -> dict[str, Any]:
        """What a checkpoint needs besides the RNG: the clusters still queued in this round."""
        return {"queues": {b: list(q) for b, q in self._queues.items()}, "turn": self._turn}

    def restore(self, state: Mapping[str, Any]) -> None:
        if set(state.get("queues", {})) != set(self.benchmarks):
            raise DsoError("the checkpoint was written for another set of benchmarks")
        self._queues = {b: list(q) for b, q in state["queues"].items()}
        self._turn = int(state["turn"])


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


class NonFiniteLoss(DsoError):
    """Training produced NaN/inf; the parameters of the last finite step are kept."""


def train_dso(
    scorer: OptionScorer,
    params: dict[str, Tensor],
    items: Sequence[Item],
    reward: Reward,
    cfg: TrainConfig,
    log: Callable[[dict[str, float]], None] = lambda row: None,
    *,
    val_items: Sequence[Item] | None = None,
    text_passages: Sequence[str] = (),
    val_text_passages: Sequence[str] = (),
    checkpoint_path: Path | None = None,
    resume: bool = False,
) -> dict[str, float]:
    """Optimise ``params`` in place; returns the last step's metrics (plus early-stopping facts).

    With ``checkpoint_path`` the state is saved every ``checkpoint_every`` steps and on Ctrl-C (at the
    end of the running step); ``resume`` continues from it and ends with the same parameters as an
    uninterrupted run.
    """
    generator = torch.Generator().manual_seed(cfg.seed)
    estimator = make_estimator(
        cfg.estimator, reward, generator, samples=cfg.samples, ppo_epochs=cfg.ppo_epochs, ppo_clip=cfg.ppo_clip
    )
    rng = random.Random(cfg.seed)
    sampler = BatchSampler(items, cfg, rng)
    omega_rng = random.Random(cfg.seed + 1)  # separate streams: every mode sees the same batches
    text_rng = random.Random(cfg.seed + 2)
    texts = _tokenized(scorer, text_passages, cfg.kl_text_tokens) if cfg.kl_text_passages > 0 else []
    prompts = _prompts(scorer, items) if cfg.kl_prompt_items > 0 else []
    prompt_rng = random.Random(cfg.seed + 3)
    val_ambiguous = [it for it in val_items or [] if it["ambiguous"]] if cfg.eval_every > 0 else []
    val_texts = _tokenized(scorer, val_text_passages, cfg.kl_text_tokens) if val_ambiguous else []
    base = BaseCache(scorer)
    names = list(params)
    leaves = [params[n] for n in names]
    optimizer = torch.optim.Adam(leaves, lr=cfg.lr, betas=cfg.betas)
    text_coef = cfg.kl_coef if cfg.kl_text_coef is None else cfg.kl_text_coef
    state: dict[str, Any] = {"step": 0, "duals": {"unambiguous": cfg.kl_coef, "neutral_text": text_coef},
                             "best": {"pob": math.inf, "step": 0, "params": None}, "bad_evals": 0}  # fmt: skip

    def snapshot() -> dict[str, Any]:
        return {
            "step": state["step"],
            "params": {n: p.detach().cpu().clone() for n, p in params.items()},
            "optimizer": optimizer.state_dict(),
            "rng": {
                "sampler": rng.getstate(),
                "omega": omega_rng.getstate(),
                "text": text_rng.getstate(),
                "prompt": prompt_rng.getstate(),
                "estimator": generator.get_state(),
            },
            "sampler": sampler.state(),
            "base_cache": dict(base._lp),  # batch composition changes float rounding: keep the exact values
            "duals": dict(state["duals"]),
            "best": state["best"],
            "bad_evals": state["bad_evals"],
            "config": asdict(cfg),
        }

    if resume:
        if checkpoint_path is None:
            raise DsoError("resuming needs a checkpoint path")
        saved = load_checkpoint(checkpoint_path)
        if set(saved["params"]) != set(names):
            raise DsoError(f"{checkpoint_path} holds parameters of other modules than this model's")
        with torch.no_grad():
            for n in names:
                params[n].copy_(saved["params"][n].to(params[n].device))
        optimizer.load_state_dict(saved["optimizer"])
        rng.setstate(saved["rng"]["sampler"])
        omega_rng.setstate(saved["rng"]["omega"])
        text_rng.setstate(saved["rng"]["text"])
        prompt_rng.setstate(saved["rng"]["prompt"])
        generator.set_state(saved["rng"]["estimator"])
        sampler.restore(saved["sampler"])
        base._lp.update({k: v.to(scorer.device) for k, v in saved["base_cache"].items()})
        state.update(step=saved["step"], duals=saved["duals"], best=saved["best"], bad_evals=saved["bad_evals"])

    metrics: dict[str, float] = {}
    bar = tqdm(range(state["step"] + 1, cfg.steps + 1), desc="dso train", unit="step", initial=state["step"],
               total=cfg.steps)  # fmt: skip
    precision = _autocast(scorer, cfg)
    with apply_affine(scorer.model, params, 1.0) as steer, deferred_interrupt() as interrupt, precision:
        for step in bar:
            started = time.perf_counter()
            metrics = _one_step(scorer, steer, estimator, sampler, base, cfg, state, optimizer, leaves, step,
                                (texts, text_rng), (prompts, prompt_rng), omega_rng)  # fmt: skip
            metrics["step_seconds"] = time.perf_counter() - started  # the optimisation alone, no evaluation
            state["step"] = step
            stop = False
            if val_ambiguous and (step % cfg.eval_every == 0 or step == cfg.steps):
                metrics |= _validate(scorer, steer, val_ambiguous, val_texts)
                budget = cfg.kl_budget if cfg.val_kl_budget and "val_text_kl" in metrics else math.inf
                stop = _early_stop_update(state, metrics, budget, step, params, cfg.patience)
            log(metrics)
            kl = {k: f"{metrics[k]:.4f}" for k in ("kl", "kl_text") if k in metrics}  # the KL terms trained on
            bar.set_postfix(reward=f"{metrics['reward']:.3f}", pob=f"{metrics['batch_pob']:.3f}", **kl)
            if checkpoint_path is not None and (step % cfg.checkpoint_every == 0 or interrupt["hit"]):
                save_checkpoint(checkpoint_path, snapshot())
            if interrupt["hit"]:
                where = f"; checkpoint saved to {checkpoint_path}" if checkpoint_path else ""
                print(f"dso train: stopped after step {step}{where}", file=sys.stderr, flush=True)
                raise KeyboardInterrupt
            if stop:
                break
    if state["best"]["params"] is not None:  # early stopping: keep the val-best parameters
        with torch.no_grad():
            for n in names:
                params[n].copy_(state["best"]["params"][n].to(params[n].device))
        metrics |= {"best_val_pob": state["best"]["pob"], "best_val_text_kl": state["best"].get("kl", math.nan),
                    "best_step": state["best"]["step"], "stopped_at": state["step"]}  # fmt: skip
    return metrics


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
    omega_rng: random.Random,
) -> dict[str, float]:
    """One optimizer step (``ppo_epochs`` of them for PPO) over ``accumulate`` micro-batches."""
    micro = []
    for _ in range(cfg.accumulate):
        amb, unamb = sampler.ambiguous_batch(), sampler.unambiguous_batch()
        text = _draw(*texts, cfg.kl_text_passages) + _draw(*prompts, cfg.kl_prompt_items)
        omega = omega_rng.uniform(0.0, 1.0) if cfg.omega == "path" else None
        micro.append({"amb": amb, "unamb": unamb, "text": text, "omega": omega, "plan": None})
    duals = state["duals"]
    metrics: dict[str, float] = {"step": step}
    constrained = cfg.kl_mode == "constraint"
    use_kl = constrained or cfg.kl_coef > 0  # the unambiguous items' KL
    use_text_kl = constrained or (cfg.kl_coef if cfg.kl_text_coef is None else cfg.kl_text_coef) > 0
    for _ in range(estimator.epochs):
        optimizer.zero_grad(set_to_none=True)
        sums: dict[str, float] = defaultdict(float)
        backward = partial(_backward, sums=sums, scale=1.0 / cfg.accumulate, step=step, state=state)
        for i, batch in enumerate(micro):
            steer.strength = 0.0  # the base policy: KL anchor and path target
            base_unamb = base(batch["unamb"]) if batch["unamb"] and use_kl else None
            with torch.no_grad():
                base_text = scorer.token_logprobs(batch["text"])[0] if batch["text"] and use_text_kl else None
            steer.strength = 1.0
            probs = policy(scorer.logprobs(batch["amb"], grad=True))
            if batch["plan"] is None:
                batch["plan"] = estimator.prepare(batch["amb"], probs.detach())
            sums["reward"] += float(estimator.expected_reward(batch["plan"], probs))
            sums["batch_pob"] += float(per_occupation_gap(batch["amb"], probs.detach()).abs().mean())
            for bench, pob in per_benchmark_pob(batch["amb"], probs.detach(), sampler.benchmarks).items():
                sums[f"batch_pob_{bench}"] += pob
            backward(estimator.loss(batch["plan"], probs), 1.0, "policy_loss")
            if batch["omega"] is not None:
                omega = batch["omega"]
                target = (1.0 - omega) * per_occupation_gap(batch["amb"], policy(base(batch["amb"])))
                steer.strength = omega
                gap = per_occupation_gap(batch["amb"], policy(scorer.logprobs(batch["amb"], grad=True)))
                steer.strength = 1.0
                backward((gap - target).pow(2).mean(), cfg.path_weight, "path_loss")
                sums["path_omega"] += omega
            if base_unamb is not None or (cfg.accuracy_weight > 0 and batch["unamb"]):
                unamb_lp = scorer.logprobs(batch["unamb"], grad=True)
                terms = []
                if base_unamb is not None:
                    kl = kl_divergence(unamb_lp, base_unamb).mean()
                    sums["kl"] += float(kl.detach())
                    terms.append(duals["unambiguous"] * kl)
                if cfg.accuracy_weight > 0:
                    accuracy = expected_accuracy(batch["unamb"], unamb_lp)
                    sums["unamb_acc"] += float(accuracy.detach())
                    terms.append(-cfg.accuracy_weight * accuracy)
                backward(sum(terms), 1.0, "unambiguous_loss")
            if base_text is not None:
                logp, lengths = scorer.token_logprobs(batch["text"])
                backward(_text_kl(logp, base_text, lengths), duals["neutral_text"], "kl_text")
            if i == 0 and cfg.l1 > 0:
                backward(sum(p.abs().sum() for p in leaves), cfg.l1 * cfg.accumulate, "l1")
        if cfg.grad_clip > 0:
            norm = float(torch.nn.utils.clip_grad_norm_(leaves, cfg.grad_clip))
        else:
            grads = [p.grad.norm() for p in leaves if p.grad is not None]
            norm = float(torch.linalg.vector_norm(torch.stack(grads))) if grads else 0.0
        if not math.isfinite(norm):
            raise NonFiniteLoss(_non_finite_message(step, "gradient", state))
        optimizer.step()
        metrics |= {k: v / (1 if k == "l1" else cfg.accumulate) for k, v in sums.items()} | {"grad_norm": norm}
    if cfg.kl_mode == "constraint":  # dual ascent on each KL source's multiplier
        for source, key in (("unambiguous", "kl"), ("neutral_text", "kl_text")):
            if key in metrics:
                duals[source] = max(0.0, duals[source] + cfg.kl_dual_lr * (metrics[key] - cfg.kl_budget))
        metrics |= {"dual_kl": duals["unambiguous"], "dual_kl_text": duals["neutral_text"]}
    return metrics


def expected_accuracy(items: Sequence[Item], logprobs: Tensor) -> Tensor:
    """Mean probability of the correct option (the exact expected reward of +1 for a correct answer)."""
    correct = torch.tensor([item["correct"] for item in items], device=logprobs.device)
    return policy(logprobs).gather(1, correct[:, None]).mean()


def per_benchmark_pob(items: Sequence[Item], probs: Tensor, benchmarks: Sequence[str]) -> dict[str, float]:
    """POB of a batch per member benchmark (a mixture's training log); nothing for one benchmark."""
    if len(benchmarks) < 2:
        return {}
    out = {}
    for bench in benchmarks:
        rows = [i for i, item in enumerate(items) if item["benchmark"] == bench]
        if rows:
            sub = [items[i] for i in rows]
            out[bench] = float(per_occupation_gap(sub, probs[rows]).abs().mean())
    return out


def _backward(
    part: Tensor, weight: float, name: str, *, sums: dict[str, float], scale: float, step: int, state: dict
) -> None:
    """Accumulate one loss term's gradient right away (its graph is freed before the next forward)."""
    value = float(part.detach())
    if not math.isfinite(value):
        raise NonFiniteLoss(_non_finite_message(step, name, state))
    sums[name] += value
    (weight * scale * part).backward()


def _non_finite_message(step: int, what: str, state: dict[str, Any]) -> str:
    return (
        f"non-finite {what} at step {step}; training stopped with the parameters of step {state['step']} "
        "(the last checkpoint, if any, is untouched): lower optimizer.lr or check the reward"
    )


def _tokenized(scorer: OptionScorer, passages: Sequence[str], max_tokens: int) -> list[list[int]]:
    seqs = [scorer.tokenizer(p, truncation=True, max_length=max_tokens)["input_ids"] for p in passages]
    return [s for s in seqs if len(s) >= 2]


def _prompts(scorer: OptionScorer, items: Sequence[Item]) -> list[list[int]]:
    """The training items' distinct prompts as token ids (text items only), for the prompt KL."""
    seqs = {tuple(scorer.encode(item).prompt_ids) for item in items if not item.get("images")}
    return [list(s) for s in sorted(seqs) if len(s) >= 2]


def _draw(pool: list[list[int]], rng: random.Random, k: int) -> list[list[int]]:
    return rng.sample(pool, min(k, len(pool))) if pool and k > 0 else []


def _text_kl(logp: Tensor, base: Tensor, lengths: Tensor) -> Tensor:
    """Mean over passages of the per-token ``KL(steered ‖ base)`` of the next-token distribution."""
    per_token = (logp.exp() * (logp - base)).sum(-1)  # [batch, width]
    width = per_token.shape[1]
    mask = torch.arange(width, device=per_token.device)[None, :] < (lengths[:, None] - 1).to(per_token.device)
    return ((per_token * mask).sum(1) / mask.sum(1).clamp_min(1)).mean()


def _validate(scorer: OptionScorer, steer: Any, val_ambiguous: Sequence[Item], val_texts: list[list[int]]) -> dict:
    """Val POB at ω = 1 and, with validation text, its per-token KL to the base model."""
    steer.strength = 1.0
    with torch.no_grad():
        probs = policy(scorer.logprobs(val_ambiguous))
        out = {"val_pob": float(per_occupation_gap(val_ambiguous, probs).abs().mean())}
        if val_texts:
            logp, lengths = scorer.token_logprobs(val_texts)
            steer.strength = 0.0
            base, _ = scorer.token_logprobs(val_texts)
            steer.strength = 1.0
            out["val_text_kl"] = float(_text_kl(logp, base, lengths))
    return out


def _early_stop_update(
    state: dict[str, Any], metrics: Mapping[str, float], kl_budget: float, step: int, params: dict[str, Tensor],
    patience: int,
) -> bool:  # fmt: skip
    """Record a val evaluation; True when ``patience`` evaluations in a row did not improve on the best.

    The best is the lowest val POB among evaluations whose val-text KL is within ``kl_budget``; while
    none is, the one with the lowest KL (so a run that never meets the budget ends at its gentlest)."""
    pob, kl = metrics["val_pob"], metrics.get("val_text_kl", 0.0)
    within = kl <= kl_budget
    best = state["best"]
    best_within = best.get("kl", 0.0) <= kl_budget and best["params"] is not None
    if best["params"] is None:
        better = True
    elif within != best_within:
        better = within
    else:
        better = pob < best["pob"] - 1e-9 if within else kl < best.get("kl", math.inf) - 1e-12
    if better:
        state["best"] = {"pob": pob, "kl": kl, "step": step,
                         "params": {n: p.detach().cpu().clone() for n, p in params.items()}}  # fmt: skip
        state["bad_evals"] = 0
        return False
    state["bad_evals"] += 1
    return state["bad_evals"] >= patience


def _autocast(scorer: OptionScorer, cfg: TrainConfig) -> Any:
    """bf16 autocast for the forward passes on CUDA; nothing on the CPU."""
    if cfg.autocast and scorer.device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return nullcontext()


@contextmanager
def deferred_interrupt() -> Iterator[dict[str, bool]]:
    """Turn the first Ctrl-C into a flag the loop checks at the end of each step (a second one aborts)."""
    flag = {"hit": False}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum: int, frame: Any) -> None:
        if flag["hit"]:
            raise KeyboardInterrupt
        flag["hit"] = True
        print("\ndso train: interrupted; finishing this step and saving a checkpoint (Ctrl-C again to abort)",
              file=sys.stderr, flush=True)  # fmt: skip

    signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)
