"""Training checkpoints: everything a run needs to continue exactly where it stopped.

A checkpoint holds the steering parameters, the optimizer state, every random stream (batch sampler,
ω path, text sampling, the estimators' sampling generator), the sampler's queue, the KL duals and the
early-stopping record, so that resuming reproduces an uninterrupted run bit for bit. It is written
atomically: a crash while saving leaves the previous checkpoint intact. It loads with torch's
weights-only unpickler: nothing in a checkpoint can execute code.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from dso_cli.errors import DsoError, first_line
from dso_cli.io import atomic_write

CHECKPOINT = "checkpoint.pt"


def save_checkpoint(path: Path, state: dict[str, Any]) -> Path:
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DsoError(f"no checkpoint to resume from at {path}")
    try:
        # tensors and plain data only (the RNG states are tuples of ints): a pickle that would run code
        # when loaded is refused, so resuming someone else's run directory executes nothing from it
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "GLOBAL" not in str(exc):  # garbled bytes; a pickle that names code says "unsupported GLOBAL"
            raise DsoError(f"{path} is not a readable checkpoint (truncated or not written by dso)") from None
        raise DsoError(
            f"{path} holds objects other than tensors and plain data; refusing to load it (not a dso checkpoint)"
        ) from None
    except Exception as exc:
        reason = f"{type(exc).__name__}: {first_line(exc, empty='')}"
        raise DsoError(f"{path} is not a readable checkpoint: {reason}") from None
