"""The optimizer's and RL trainer's settings: one class holds each key's default, help text and range.

:class:`OptimizerOptions` is the schema of the ``optimizer`` config group (``conf/optimizer/adam.yaml``
is a preset on top of it); :class:`dso_cli.rl.config.TrainConfig` extends it with the run's seed, so
the CLI, the Python API and the trainer's tests train the same objective from the same defaults. A
bad value is one line naming the key when the trainer's settings are made (before a model loads).
"""

from __future__ import annotations

import math
import typing
from dataclasses import dataclass, fields
from typing import Any

from dso_cli.config.fields import allowed_types, setting
from dso_cli.errors import DsoError

CHOICES = {"strength_mode": ("fixed", "path"), "kl_mode": ("penalty", "constraint"),
           "lr_schedule": ("constant", "cosine", "linear"), "association_divergence": ("kl", "square")}  # fmt: skip
AT_LEAST_ONE = ("steps", "accumulate", "occupations_per_batch", "pairs_per_occupation", "samples", "ppo_epochs",
                "kl_text_tokens", "checkpoint_every", "patience", "association_probes")  # fmt: skip
POSITIVE = ("lr", "kl_budget", "ppo_clip")


@dataclass
class OptimizerOptions:
    """Adam on a trained method's parameters and the DSO objective's weights (demo-sized by default:
    fits ``make demo`` on 2 CPU cores; the paper's protocol is ``steps=300 occupations_per_batch=8``).

    What protects the model (chosen by ``scripts/generalization_study.sh``; see docs/results/archive.md): the
    full-vocabulary KL(steered || base) per token on ``kl_text_passages`` neutral training passages
    (cut to ``kl_text_tokens``) and on the prompts of ``kl_prompt_items`` training items per step,
    weight ``kl_text_coef``; the expected accuracy on unambiguous items (``accuracy_weight``);
    optionally the two-option KL on unambiguous items (``kl_coef``) and the pronoun association of the
    training occupations (``association_weight``, :mod:`dso_cli.rl.association`). ``kl_mode``: ``penalty`` (fixed
    weights) or ``constraint`` (each KL source ≤ ``kl_budget``, its multiplier learnt by dual ascent
    from its weight with step ``kl_dual_lr``). Every tenth passage of the training text is kept out for
    early stopping; the held-out articles that ``text_kl`` measures are never used.
    """

    name: str = setting("adam", "optimizer name (adam)")
    lr: float = setting(0.001, "learning rate")
    lr_schedule: str = setting(
        "cosine", "constant | cosine | linear: the learning rate from lr at step 1 down to 0 after the last step"
    )
    betas: list[float] = setting([0.9, 0.999], "Adam betas, two numbers in [0, 1)")
    steps: int = setting(60, "optimizer steps")
    occupations_per_batch: int = setting(4, "clusters (occupations) per batch")
    pairs_per_occupation: int = setting(
        2, "counterbalanced pairs per cluster and batch (a scenario in several formats counts once)"
    )
    unambiguous_per_batch: int = setting(16, "unambiguous items per step")
    accumulate: int = setting(1, "micro-batches per optimizer step")
    grad_clip: float = setting(1.0, "gradient norm clip")
    estimator: str = setting("exact", "exact | reinforce | rloo | ppo")
    samples: int = setting(4, "rloo / ppo: sampled options per item")
    ppo_epochs: int = setting(4, "ppo: updates per batch")
    ppo_clip: float = setting(0.2, "ppo: clipping range")
    kl_mode: str = setting("penalty", "penalty | constraint")
    kl_coef: float = setting(0.0, "two-option KL weight on unambiguous items (0: off)")
    kl_budget: float = setting(0.05, "constraint: KL budget per source")
    kl_dual_lr: float = setting(1.0, "constraint: dual ascent step")
    kl_text_passages: int = setting(4, "neutral training passages per step in the full-vocabulary KL")
    kl_text_tokens: int = setting(48, "tokens per training passage")
    kl_text_path: str | None = setting(None, "training text, one passage per line (null: the Lee background articles)")
    kl_text_coef: float | None = setting(20.0, "text KL weight (null: kl_coef)")
    kl_prompt_items: int = setting(4, "training prompts per step in the text KL")
    accuracy_weight: float = setting(3.0, "reward weight of the unambiguous items' correct option")
    accuracy_target: float | None = setting(
        None,
        "constraint: the unambiguous accuracy to hold (its weight then learnt by dual ascent from "
        "accuracy_weight); null: the fixed weight",
    )
    accuracy_dual_lr: float = setting(10.0, "constraint: the accuracy weight's dual ascent step")
    association_weight: float = setting(
        5.0,
        "weight of the pronoun-association term: KL(uniform || P(he), P(she)) after training occupations' "
        "pronoun probes, plus the KL to base on their name-determined controls (0: off; occupation items only)",
    )
    association_divergence: str = setting(
        "kl", "kl (KL(uniform || pi) of the pronoun pair) | square ((P(she) - .5)^2, vanishing where P is near 0 or 1)"
    )
    association_probes: int = setting(8, "association probes (and as many controls) per step")
    l1: float = setting(0.0, "L1 sparsity on a and b")
    strength_mode: str = setting("fixed", "fixed: train at strength 1 only (the paper) | path: also along (0, 1)")
    path_weight: float = setting(1.0, "weight of the monotone-path term")
    eval_every: int = setting(0, "early stopping: val POB every N steps (0: off)")
    patience: int = setting(3, "evaluations without improvement before stopping")
    val_kl_budget: bool = setting(True, "early stopping keeps steps whose val-text KL is within kl_budget")
    checkpoint_every: int = setting(10, "steps between checkpoints")
    autocast: bool = setting(True, "bf16 autocast of forward passes on CUDA")

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        numbers = {spec.name: kind for spec in fields(self) if (kind := _number_kind(hints[spec.name]))}
        for name, kind in numbers.items():
            if getattr(self, name) is not None:
                setattr(self, name, _number(f"optimizer.{name}", getattr(self, name), kind))
        betas = self.betas
        if isinstance(betas, (str, bytes)) or not hasattr(betas, "__len__") or len(betas) != 2:
            raise DsoError(f"optimizer.betas={betas!r} must be two numbers in [0, 1)")
        self.betas = [_number("optimizer.betas", b, float) for b in betas]
        if not all(0 <= b < 1 for b in self.betas):
            raise DsoError(f"optimizer.betas={self.betas} must be two numbers in [0, 1)")
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise DsoError(f"optimizer.{name} must be one of {', '.join(allowed)}, not {getattr(self, name)!r}")
        for name in AT_LEAST_ONE:
            if getattr(self, name) < 1:
                raise DsoError(f"optimizer.{name} must be at least 1, not {getattr(self, name)}")
        for name in POSITIVE:
            if not getattr(self, name) > 0:
                raise DsoError(f"optimizer.{name} must be greater than 0, not {getattr(self, name)}")
        if self.accuracy_target is not None and not 0 < self.accuracy_target <= 1:
            raise DsoError(f"optimizer.accuracy_target must be in (0, 1], not {self.accuracy_target}")
        for name in numbers:  # every other number: a weight, a count or a switch-off 0
            value = getattr(self, name)
            if value is not None and value < 0:
                raise DsoError(f"optimizer.{name} must be at least 0, not {value}")


def _number_kind(hint: Any) -> type | None:
    """int or float for a numeric setting (``float | None`` included), else None."""
    kinds = [k for k in allowed_types(hint) if k is not type(None)]
    return kinds[0] if len(kinds) == 1 and kinds[0] in (int, float) else None


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
