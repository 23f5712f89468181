"""The DSO training loop: policy-gradient debiasing of the affine steering parameters.

Each step draws a batch of ambiguous items (a few occupations, both person orders of each template),
a batch of unambiguous items and a few neutral passages and training prompts, and minimises

    − E_{x, y∼π_ω=1}[r(y, x)]                          the paper's objective (exact estimator)
    − γ · E_unamb[π_ω=1(correct)]                      stay correct where the prompt gives evidence
    + β_text · KL_tok(p_ω=1 ‖ p_base) on text/prompts  full-vocabulary next-token KL, per token
    + β · KL(π_ω=1 ‖ π_base) on unambiguous items       the two options' KL (off by default)
    + ν · (E_o[KL(u ‖ π_ω=1(he, she | o))] + KL_controls)  pronoun association of the training occupations
    + λ · (‖a‖₁ + ‖b‖₁)                                sparsity
    + μ · E_ω[(G_o(ω) − (1 − ω) G_o(0))²]             the ω path (``strength_mode=path`` only)

where ``G_o(ω)`` is the signed per-occupation gap ``P(pro|o) − P(anti|o)`` at strength ω.
``strength_mode=fixed`` trains at ω = 1 only, as the paper does; the strengths in between are then
unconstrained, and with a large step size they can end up *more* biased than the base model.
``strength_mode=path`` also scores each batch at a random ω ∈ (0, 1) and pulls every occupation's gap there
towards the straight line from its base gap (ω = 0) to zero (ω = 1), so that bias falls with ω in
proportion. Measured trade-offs of the modes and of the protecting terms are in docs/results/.
"""

from __future__ import annotations

import math
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from dso_cli.benchmarks.schema import DecisionItem
from dso_cli.errors import DsoError
from dso_cli.rl.association import AssociationProbes
from dso_cli.rl.batches import BaseCache, BatchSampler
from dso_cli.rl.checkpoint import load_checkpoint, save_checkpoint
from dso_cli.rl.config import TrainConfig
from dso_cli.rl.estimators import make_estimator
from dso_cli.rl.phases import PhaseTimer, untimed
from dso_cli.rl.rewards import Reward, cluster_pob
from dso_cli.rl.state import TrainState
from dso_cli.rl.step import (
    _one_step,
    _prompts,
    _tokenized,
)
from dso_cli.rl.text_kl import text_kl
from dso_cli.scoring import OptionScorer, policy

Apply = Callable[[nn.Module, Mapping[str, Tensor], float], AbstractContextManager]
"""How the trained transform is put on a model: ``apply(model, params, strength)`` returns a context
manager whose ``strength`` attribute can be changed inside (DSO's: ``steering.affine.apply_affine``)."""


def train_dso(
    apply: Apply,
    scorer: OptionScorer,
    params: dict[str, Tensor],
    items: Sequence[DecisionItem],
    reward: Reward,
    cfg: TrainConfig,
    log: Callable[[dict[str, float]], None] = lambda row: None,
    *,
    val_items: Sequence[DecisionItem] | None = None,
    text_passages: Sequence[str] = (),
    val_text_passages: Sequence[str] = (),
    checkpoint_path: Path | None = None,
    resume: bool = False,
    timer: PhaseTimer | None = None,
    fast_step: bool = True,
) -> dict[str, float]:
    """Optimise ``params`` of the transform that ``apply`` puts on ``scorer.model`` in place; returns the
    last step's metrics (plus early-stopping facts). The trainer knows the transform only through
    ``apply``, so any differentiable steering with a settable strength trains the same way.

    With ``checkpoint_path`` the state is saved every ``checkpoint_every`` steps and on Ctrl-C (at the
    end of the running step); ``resume`` continues from it and ends with the same parameters as an
    uninterrupted run.

    ``timer`` sums the seconds of each phase of a step; ``fast_step=False`` runs the step as earlier
    versions did (the training benchmark's baseline, with the same gradients up to float rounding):
    the base model's forward pass on the KL passages and prompts every step, and the text KL over
    right-padded rows instead of prefix trees.
    """
    generator = torch.Generator().manual_seed(cfg.seed)
    estimator = make_estimator(
        cfg.estimator, reward, generator, samples=cfg.samples, ppo_epochs=cfg.ppo_epochs, ppo_clip=cfg.ppo_clip
    )
    rng = random.Random(cfg.seed)
    sampler = BatchSampler(items, cfg, rng)
    strength_rng = random.Random(cfg.seed + 1)  # separate streams: every mode sees the same batches
    text_rng = random.Random(cfg.seed + 2)
    texts = _tokenized(scorer, text_passages, cfg.kl_text_tokens) if cfg.kl_text_passages > 0 else []
    prompts = _prompts(scorer, items) if cfg.kl_prompt_items > 0 else []
    prompt_rng = random.Random(cfg.seed + 3)
    probes = AssociationProbes(items, cfg.association_probes, cfg.seed) if cfg.association_weight > 0 else None
    val_ambiguous = [it for it in val_items or [] if it["ambiguous"]] if cfg.eval_every > 0 else []
    val_texts = _tokenized(scorer, val_text_passages, cfg.kl_text_tokens) if val_ambiguous else []
    base = BaseCache(scorer, text=fast_step)
    names = list(params)
    leaves = [params[n] for n in names if params[n].requires_grad]  # a frozen b (stock_export) stays 0
    optimizer = torch.optim.Adam(leaves, lr=cfg.lr, betas=cfg.betas)
    text_coef = cfg.kl_coef if cfg.kl_text_coef is None else cfg.kl_text_coef
    duals = {"unambiguous": cfg.kl_coef, "neutral_text": text_coef, "accuracy": cfg.accuracy_weight}
    state: dict[str, Any] = {"step": 0, "duals": duals,
                             "best": {"pob": math.inf, "step": 0, "params": None}, "bad_evals": 0}  # fmt: skip

    streams = {"sampler": rng, "strength": strength_rng, "text": text_rng, "prompt": prompt_rng}
    saved_state = TrainState(params, optimizer, streams, generator, sampler, base, state, cfg)
    if resume:
        if checkpoint_path is None:
            raise DsoError("resuming needs a checkpoint path")
        saved_state.restore(load_checkpoint(checkpoint_path), checkpoint_path)

    metrics: dict[str, float] = {}
    bar = tqdm(range(state["step"] + 1, cfg.steps + 1), desc="dso train", unit="step", initial=state["step"],
               total=cfg.steps)  # fmt: skip
    precision = _autocast(scorer, cfg)
    with apply(scorer.model, params, 1.0) as steer, deferred_interrupt() as interrupt, precision:
        for step in bar:
            started = time.perf_counter()
            metrics = _one_step(scorer, steer, estimator, sampler, base, cfg, state, optimizer, leaves, step,
                                (texts, text_rng), (prompts, prompt_rng), strength_rng,
                                timer if timer is not None else untimed, packed_text=fast_step,
                                probes=probes)  # fmt: skip
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
                save_checkpoint(checkpoint_path, saved_state.snapshot())
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


def _validate(
    scorer: OptionScorer, steer: Any, val_ambiguous: Sequence[DecisionItem], val_texts: list[list[int]]
) -> dict:
    """Val POB at ω = 1 and, with validation text, its per-token KL to the base model."""
    steer.strength = 1.0
    with torch.no_grad():
        probs = policy(scorer.logprobs(val_ambiguous))
        out = {"val_pob": float(cluster_pob(val_ambiguous, probs))}
        if val_texts:
            steer.strength = 0.0
            base, lengths = scorer.token_hidden(val_texts)
            steer.strength = 1.0
            rows = [row[:n] for row, n in zip(base, lengths.tolist(), strict=True)]
            out["val_text_kl"] = float(text_kl(scorer, val_texts, rows))
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
