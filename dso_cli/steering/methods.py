"""Fit any steering method from its ``steering_method`` config: one entry point for ``dso train`` and
``dso compare``.

DSO runs the RL trainer; the baselines are fitted in closed form from answer-position activations of
the train split. An :class:`ActivationStore` shared by several fits (after :func:`prefetch_for`) runs
the model over the training items once for all of them. Every method returns the same kind of
artifact (safetensors + manifest) with its own applier.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from dso_cli.errors import DsoError
from dso_cli.models.layouts import find_head_projections, find_norm_modules
from dso_cli.models.loading import LoadedModel
from dso_cli.steering.activations import ActivationStore
from dso_cli.steering.artifact import Artifact

CLOSED_FORM = ("none", "prompting", "caa", "iti", "mean_match", "leace")
ALL_METHODS = (*CLOSED_FORM, "dso")


def modules_needed(
    name: str, loaded: LoadedModel, options: Mapping[str, Any], norm_modules: Any, can_select: bool
) -> tuple[list[str], list[str]]:
    """``(outputs, inputs)``: the modules whose activations fitting ``name`` records."""
    model = loaded.model
    if name == "caa":
        from dso_cli.steering.caa import caa_modules

        return caa_modules(model, options, can_select), []
    if name == "leace":
        from dso_cli.steering.caa import resolve_layers

        return resolve_layers(model, options.get("layers")), []
    if name == "mean_match":
        return list(find_norm_modules(model, norm_modules)), []
    if name == "iti":
        return [], find_head_projections(model)[0]
    return [], []


def prefetch_for(
    methods: Sequence[str],
    loaded: LoadedModel,
    store: ActivationStore,
    options: Mapping[str, Mapping[str, Any]],
    norm_modules: Any = None,
    can_select: bool = True,
) -> None:
    """Record every activation the closed-form ``methods`` will need, in one run over the items."""
    outputs: list[str] = []
    inputs: list[str] = []
    for name in methods:
        out, inp = modules_needed(name, loaded, options.get(name, {}), norm_modules, can_select)
        outputs += out
        inputs += inp
    store.prefetch(outputs=list(dict.fromkeys(outputs)), inputs=list(dict.fromkeys(inputs)))


def fit_closed_form(
    name: str,
    loaded: LoadedModel,
    store: ActivationStore,
    options: Mapping[str, Any],
    norm_modules: Any = None,
    val_items: Sequence[Mapping[str, Any]] | None = None,
) -> Artifact:
    """Fit a baseline (``options`` is its ``steering_method`` config section; ``val_items`` lets CAA
    choose its layer)."""
    if name == "none":
        from dso_cli.steering.none import fit_none

        return fit_none(loaded)
    if name == "prompting":
        from dso_cli.steering.prompting import fit_prompting

        return fit_prompting(loaded, options.get("instruction"))
    if name == "caa":
        from dso_cli.steering.caa import fit_caa

        return fit_caa(
            loaded,
            store,
            layers=options.get("layers"),
            val_items=val_items,
            candidate_layers=options.get("candidate_layers"),
            select_alpha=float(options.get("select_alpha", 2.0)),
        )
    if name == "iti":
        from dso_cli.steering.iti import fit_iti

        return fit_iti(loaded, store, top_k=int(options.get("top_k", 8)), seed=int(options.get("seed", 0)))
    if name == "mean_match":
        from dso_cli.steering.mean_match import fit_mean_match

        return fit_mean_match(loaded, store, norm_modules=norm_modules)
    if name == "leace":
        from dso_cli.steering.leace import fit_leace

        return fit_leace(loaded, store, layers=options.get("layers"))
    raise DsoError(f"steering_method={name!r} cannot be fitted (choose from: dso, {', '.join(CLOSED_FORM)})")
