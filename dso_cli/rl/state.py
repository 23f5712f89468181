"""Everything a training run needs to continue exactly where it stopped, saved and restored through
public methods: parameters, Adam's moments, every random stream, the sampler's position, the base
model's cached log-probabilities, the KL duals and the early-stopping record."""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from dso_cli.errors import DsoError
from dso_cli.rl.batches import BaseCache, BatchSampler
from dso_cli.rl.config import TrainConfig

LEGACY_STREAMS = {"strength": "omega"}  # stream names of checkpoints from earlier versions


@dataclass
class TrainState:
    params: Mapping[str, Tensor]
    optimizer: torch.optim.Optimizer
    rngs: Mapping[str, random.Random]  # sampler, strength, text, prompt: separate streams
    generator: torch.Generator  # the estimator's sampling
    sampler: BatchSampler
    base: BaseCache
    progress: dict[str, Any]  # step, duals, best, bad_evals (updated by the step and early stopping)
    config: TrainConfig

    def snapshot(self) -> dict[str, Any]:
        """A plain-data checkpoint (loadable with ``torch.load(weights_only=True)``)."""
        return {
            "step": self.progress["step"],
            "params": {n: p.detach().cpu().clone() for n, p in self.params.items()},
            "optimizer": self.optimizer.state_dict(),
            "rng": {**{name: r.getstate() for name, r in self.rngs.items()}, "estimator": self.generator.get_state()},
            "sampler": self.sampler.state(),
            "base_cache": self.base.state(),
            "duals": dict(self.progress["duals"]),
            "best": self.progress["best"],
            "bad_evals": self.progress["bad_evals"],
            "config": asdict(self.config),
        }

    def restore(self, saved: Mapping[str, Any], where: Path | str) -> None:
        """Continue from ``saved`` (a :meth:`snapshot`); refused when it holds other modules' parameters."""
        if set(saved["params"]) != set(self.params):
            raise DsoError(f"{where} holds parameters of other modules than this model's")
        with torch.no_grad():
            for name, param in self.params.items():
                param.copy_(saved["params"][name].to(param.device))
        self.optimizer.load_state_dict(saved["optimizer"])
        for name, stream in self.rngs.items():  # "omega": the strength stream's name in older checkpoints
            stream.setstate(saved["rng"][name] if name in saved["rng"] else saved["rng"][LEGACY_STREAMS[name]])
        self.generator.set_state(saved["rng"]["estimator"])
        self.sampler.restore(saved["sampler"])
        self.base.restore(saved["base_cache"])
        self.progress.update(step=saved["step"], duals=saved["duals"], best=saved["best"],
                             bad_evals=saved["bad_evals"])  # fmt: skip
