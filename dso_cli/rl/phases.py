"""Wall time per phase of a training step, for the training benchmark (``scripts/bench_training.py``):
a no-op unless a :class:`PhaseTimer` is given to the trainer, so a run pays nothing for it."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

import torch


class PhaseTimer:
    """Sums the seconds spent in each named phase (``with timer("text_kl"): ...``), synchronising CUDA at
    both ends so that queued kernels count where they were launched."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        _sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            _sync()
            self.seconds[name] += time.perf_counter() - start

    def reset(self) -> None:
        self.seconds.clear()


@contextmanager
def untimed(name: str) -> Iterator[None]:
    """The stand-in when no timer is given."""
    yield


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
