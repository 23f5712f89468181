"""Training checkpoints: everything a run needs to continue exactly where it stopped.

A checkpoint holds the steering parameters, the optimizer state, every random stream (batch sampler,
ω path, text sampling, the estimators' sampling generator), the sampler's queue, the KL duals and the
early-stopping record, so that resuming reproduces an uninterrupted run bit for bit. It is written
atomically: a crash while saving leaves the previous checkpoint intact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from dso_cli.errors import DsoError
from dso_cli.io import atomic_write

CHECKPOINT = "checkpoint.pt"


def save_checkpoint(path: Path, state: dict[str, Any]) -> Path:
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DsoError(f"no checkpoint to resume from at {path}")
    try:
        # our own file: it also holds Python random states, which the weights-only loader refuses
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise DsoError(f"{path} is not a readable checkpoint: {type(exc).__name__}: {exc}") from None
