"""The RL trainer's settings, checked once when they are made (a bad value is one line naming the key)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from dso_cli.errors import DsoError


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
    strength_mode: str = "fixed"
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

        choices = {"strength_mode": ("fixed", "path"), "kl_mode": ("penalty", "constraint"), "estimator": ESTIMATORS}
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
