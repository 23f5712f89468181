"""Inference-Time Intervention (Li et al. 2023) as a baseline.

Per attention head, the head's output (the input of the attention output projection, split by head)
at the answer position of pro- and anti-stereotypical completions trains a linear probe for the
stereotype label; the top-K heads by held-out probe accuracy are shifted along their mass-mean
direction (mean anti − mean pro, unit length) by ``α · σ``, σ being the standard deviation of the
activations along that direction. The shift is applied at every token by a pre-hook on the output
projection, so one vector per layer (zero outside the chosen heads) is the whole artifact.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from dso_cli.config.group_schemas import ITIOptions
from dso_cli.errors import DsoError
from dso_cli.models.layouts import find_head_projections
from dso_cli.models.loading import LoadedModel
from dso_cli.steering.activations import ActivationStore
from dso_cli.steering.affine import SteeringHandle
from dso_cli.steering.artifact import Artifact
from dso_cli.steering.hooks import hooks_on
from dso_cli.steering.method import FitJob, SteeringMethod

STRENGTH = {
    "semantics": "chosen heads' outputs + strength * sigma * unit(mean anti - mean pro); 0 = base",
    "range": [0.0, 20.0],
    "default_grid": "[0,1,2.5,5,10,15]",
}


def probe_accuracies(pro: Tensor, anti: Tensor, held_out: float = 0.3, steps: int = 200, seed: int = 0) -> Tensor:
    """Held-out accuracy of one logistic probe per head, all heads at once.

    ``pro``/``anti``: ``[n_items, n_heads, head_dim]``. Items are split (the same split for every head)
    into a fitting and a held-out part; probes are fitted jointly with L-BFGS.
    """
    x = torch.cat([pro, anti]).double()
    y = torch.cat([torch.zeros(len(pro)), torch.ones(len(anti))]).double()
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_test = max(1, int(len(x) * held_out))
    test, fit = order[:n_test], order[n_test:]
    mean, std = x[fit].mean(0), x[fit].std(0).clamp(min=1e-6)
    x = (x - mean) / std
    w = torch.zeros(x.shape[1], x.shape[2], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        logits = torch.einsum("nhd,hd->nh", x[fit], w) + b
        target = y[fit][:, None].expand_as(logits)
        loss = nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="sum") / len(fit)
        loss = loss + 1e-3 * w.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        logits = torch.einsum("nhd,hd->nh", x[test], w) + b
        return ((logits > 0).double() == y[test][:, None]).double().mean(0).float()


def shift_vectors(pro: Tensor, anti: Tensor) -> Tensor:
    """Per head, ``σ · unit(mean anti − mean pro)``: ``[n_heads, head_dim]``."""
    direction = anti.mean(0) - pro.mean(0)
    unit = direction / direction.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    projected = torch.einsum("nhd,hd->nh", torch.cat([pro, anti]), unit)
    return unit * projected.std(0)[:, None]


def fit_iti(loaded: LoadedModel, store: ActivationStore, options: ITIOptions | None = None) -> Artifact:
    options = options or ITIOptions()
    top_k, seed = options.top_k, options.seed
    names, n_heads = find_head_projections(loaded.model)
    acts = store.inputs(names)
    if len(acts["pro"][names[0]]) < 4:
        raise DsoError("iti needs at least four ambiguous training items with pro and anti options")
    per_layer = {}
    scores = []
    for layer, name in enumerate(names):
        pro, anti = (acts[k][name].view(len(acts[k][name]), n_heads, -1) for k in ("pro", "anti"))
        per_layer[name] = (pro, anti)
        scores += [(float(acc), layer, head) for head, acc in enumerate(probe_accuracies(pro, anti, seed=seed))]
    chosen = sorted(scores, key=lambda s: (-s[0], s[1], s[2]))[: max(1, top_k)]
    tensors = {}
    for _, layer, head in chosen:
        name = names[layer]
        pro, anti = per_layer[name]
        vector = tensors.setdefault(f"{name}.v", torch.zeros(pro.shape[1] * pro.shape[2]))
        head_dim = pro.shape[2]
        vector[head * head_dim : (head + 1) * head_dim] = shift_vectors(pro, anti)[head]
    return Artifact.create(
        "iti",
        tensors,
        model=loaded.describe(),
        hyperparameters={
            "top_k": top_k,
            "heads": [{"module": names[layer], "head": head, "probe_accuracy": acc} for acc, layer, head in chosen],
            "n_items": len(acts["pro"][names[0]]),
        },
        strength=STRENGTH,
    )


@contextmanager
def apply_head_shift(
    model: nn.Module, tensors: Mapping[str, Tensor], strength: float = 1.0
) -> Iterator[SteeringHandle]:
    """Add ``strength · v`` to the input of every output projection named in ``tensors``."""
    handle = SteeringHandle(strength, limit=STRENGTH["range"][1])
    per_module = {key.rsplit(".", 1)[0]: vector for key, vector in tensors.items()}
    with hooks_on(model, per_module, lambda vector: _make_pre_hook(handle, vector), pre=True):
        yield handle


def _make_pre_hook(handle: SteeringHandle, vector: Tensor):
    def hook(module: nn.Module, args: tuple) -> tuple | None:
        if handle.strength == 0.0:
            return None
        x = args[0]
        if x.shape[-1] != vector.shape[0]:
            raise DsoError(f"head shift of size {vector.shape[0]} does not fit an input of {x.shape[-1]}")
        return ((x.float() + handle.strength * vector.to(x.device).float()).to(x.dtype), *args[1:])

    return hook


class ITI(SteeringMethod):
    """Inference-Time Intervention (options: ``top_k`` heads, ``seed`` of the probes)."""

    name = "iti"
    options_class = ITIOptions
    placement = "heads"
    strength = STRENGTH

    def records(self, model: nn.Module, norm_modules: Any, can_select: bool) -> tuple[list[str], list[str]]:
        return [], find_head_projections(model)[0]

    def fit(self, job: FitJob) -> Artifact:
        return fit_iti(job.loaded, job.activations(), self.options)

    @classmethod
    def apply(cls, model: nn.Module, tensors: Mapping[str, Tensor], strength: float):
        return apply_head_shift(model, tensors, strength)
