"""Contrastive Activation Addition (Rimsky et al. 2024) as a baseline.

The steering vector of a decoder layer is the mean difference of its output (the residual stream) at
the answer position between anti- and pro-stereotypical completions of the ambiguous training items;
applying it adds ``α · v`` to that layer's output at every token. Strength α = 1 adds the mean
difference once; unlike DSO, nothing makes bias fall monotonically in α.

Without configured layers the layer is chosen on the ``val`` split: a vector is fitted at each
candidate layer (one run over the training items records them all) and the candidate whose vector
gives the lowest POB on val's ambiguous items at the selection strength wins.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from torch import Tensor, nn
from tqdm.auto import tqdm

from dso_cli.config.group_schemas import CAAOptions
from dso_cli.errors import DsoError
from dso_cli.metrics import pob as pob_of
from dso_cli.models.layouts import find_decoder_layers, layer_modules
from dso_cli.models.loading import LoadedModel
from dso_cli.scoring import OptionScorer, policy
from dso_cli.steering.activations import ActivationStore
from dso_cli.steering.affine import SteeringHandle
from dso_cli.steering.artifact import Artifact
from dso_cli.steering.hooks import hooks_on, output_tensor, with_hidden
from dso_cli.steering.method import FitJob, SteeringMethod

STRENGTH = {
    "semantics": "residual stream of each chosen layer + strength * (mean anti - mean pro activation); 0 = base",
    "range": [0.0, 8.0],
    "default_grid": "[0,1,2,4,8]",
}


def mean_difference(pro: Tensor, anti: Tensor) -> Tensor:
    """``mean(anti) − mean(pro)`` over items (rows)."""
    return anti.mean(0) - pro.mean(0)


def default_candidates(n_layers: int, count: int = 5) -> list[int]:
    """``count`` evenly spaced interior layers (1/6 … 5/6 of the depth for five)."""
    return sorted({min(n_layers - 1, round(n_layers * k / (count + 1))) for k in range(1, count + 1)})


def caa_modules(model: nn.Module, options: CAAOptions, can_select: bool) -> list[str]:
    """The decoder layers whose outputs a CAA fit with ``options`` records."""
    if options.layers or not can_select:
        return layer_modules(model, options.layers, "caa")
    candidates = options.candidate_layers or default_candidates(len(find_decoder_layers(model)))
    return layer_modules(model, candidates, "caa")


def fit_caa(
    loaded: LoadedModel,
    acts: ActivationStore,
    options: CAAOptions | None = None,
    *,
    val_items: Sequence[Mapping[str, Any]] | None = None,
) -> Artifact:
    """Mean-difference vectors at ``layers``; with none given and ambiguous ``val_items``, one layer
    chosen among ``candidate_layers`` (default: five evenly spaced) by val POB at ``select_alpha``."""
    options = options or CAAOptions()
    layers = options.layers
    val_ambiguous = [it for it in val_items or [] if it["ambiguous"]]
    names = caa_modules(loaded.model, options, can_select=bool(val_ambiguous))
    recorded = acts.outputs(names)
    if not len(recorded["pro"][names[0]]):
        raise DsoError("caa needs ambiguous training items with a pro- and an anti-stereotypical option")
    vectors = {name: mean_difference(recorded["pro"][name], recorded["anti"][name]) for name in names}
    selection = None
    if not layers and val_ambiguous:
        selection = select_layer(acts.scorer, vectors, val_ambiguous, options.select_alpha)
        names = [min(selection["candidates"], key=lambda c: c["val_pob"])["module"]]
    index = {name: i for i, name in enumerate(find_decoder_layers(loaded.model))}
    return Artifact.create(
        "caa",
        {f"{name}.v": vectors[name] for name in names},
        model=loaded.describe(),
        hyperparameters={
            "layers": [index[name] for name in names],
            "configured_layers": list(layers) if layers else None,
            "modules": names,
            "n_items": len(recorded["pro"][names[0]]),
            "layer_selection": selection,
        },
        strength=STRENGTH,
    )


def select_layer(
    scorer: OptionScorer, vectors: Mapping[str, Tensor], val_ambiguous: Sequence[Mapping[str, Any]], strength: float
) -> dict[str, Any]:
    """Val POB of each candidate layer's vector at ``strength`` (and of the base model)."""
    base = policy(scorer.logprobs(val_ambiguous)).cpu()
    candidates = []
    device = next(scorer.model.parameters()).device
    for name, vector in tqdm(vectors.items(), desc="caa layer on val", unit="layer", leave=False):
        with apply_additive(scorer.model, {f"{name}.v": vector.to(device)}, strength):
            probs = policy(scorer.logprobs(val_ambiguous)).cpu()
        pob = pob_of(val_ambiguous, probs)
        candidates.append({"module": name, "val_pob": pob})
    base_pob = pob_of(val_ambiguous, base)
    return {
        "alpha": strength,
        "n_val_ambiguous": len(val_ambiguous),
        "val_pob_base": base_pob,
        "candidates": candidates,
    }


@contextmanager
def apply_additive(model: nn.Module, tensors: Mapping[str, Tensor], strength: float = 1.0) -> Iterator[SteeringHandle]:
    """Add ``strength · v`` to the output of every module named in ``tensors`` (keys ``<module>.v``)."""
    handle = SteeringHandle(strength, limit=STRENGTH["range"][1])
    per_module = {key.rsplit(".", 1)[0]: vector for key, vector in tensors.items()}
    with hooks_on(model, per_module, lambda vector: _make_hook(handle, vector)):
        yield handle


def _make_hook(handle: SteeringHandle, vector: Tensor):
    def hook(module: nn.Module, inputs: tuple, output: Any) -> Any:
        if handle.strength == 0.0:
            return None
        hidden = output_tensor(output)
        if hidden.shape[-1] != vector.shape[0]:
            raise DsoError(
                f"steering vector of size {vector.shape[0]} does not fit an output of size {hidden.shape[-1]}"
            )
        steered = (hidden.float() + handle.strength * vector.to(hidden.device).float()).to(hidden.dtype)
        return with_hidden(output, steered)

    return hook


class CAA(SteeringMethod):
    """Contrastive Activation Addition (options: ``layers``, ``candidate_layers``, ``select_alpha``)."""

    name = "caa"
    options_class = CAAOptions
    placement = "vector"
    strength = STRENGTH

    def records(self, model: nn.Module, norm_modules: Any, can_select: bool) -> tuple[list[str], list[str]]:
        return caa_modules(model, self.options, can_select), []

    def fit(self, job: FitJob) -> Artifact:
        return fit_caa(job.loaded, job.activations(), self.options, val_items=job.val_items)

    @classmethod
    def apply(cls, model: nn.Module, tensors: Mapping[str, Tensor], strength: float):
        return apply_additive(model, tensors, strength)
