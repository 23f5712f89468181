"""Fit any steering method from its ``steering_method`` config: one entry point for ``dso train``.

DSO runs the RL trainer; the baselines are fitted in closed form from activations on the train
split. Every method returns the same kind of artifact (safetensors + manifest) with its own applier.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from dso_cli.errors import DsoError
from dso_cli.models.loading import LoadedModel
from dso_cli.scoring import OptionScorer
from dso_cli.steering.artifact import Artifact

CLOSED_FORM = ("none", "prompting", "caa", "iti", "mean_match", "leace")


def fit_closed_form(
    name: str,
    loaded: LoadedModel,
    scorer: OptionScorer,
    items: Sequence[Mapping[str, Any]],
    options: Mapping[str, Any],
    norm_modules: Any = None,
) -> Artifact:
    """Fit a baseline (``options`` is its ``steering_method`` config section)."""
    if name == "none":
        from dso_cli.steering.none import fit_none

        return fit_none(loaded)
    if name == "prompting":
        from dso_cli.steering.prompting import fit_prompting

        return fit_prompting(loaded, options.get("instruction"))
    if name == "caa":
        from dso_cli.steering.caa import fit_caa

        return fit_caa(loaded, scorer, items, layers=options.get("layers"))
    if name == "iti":
        from dso_cli.steering.iti import fit_iti

        return fit_iti(loaded, scorer, items, top_k=int(options.get("top_k", 8)), seed=int(options.get("seed", 0)))
    if name == "mean_match":
        from dso_cli.steering.mean_match import fit_mean_match

        return fit_mean_match(loaded, scorer, items, norm_modules=norm_modules)
    if name == "leace":
        from dso_cli.steering.leace import fit_leace

        return fit_leace(loaded, scorer, items, layers=options.get("layers"))
    raise DsoError(f"steering_method={name!r} cannot be fitted (choose from: dso, {', '.join(CLOSED_FORM)})")
