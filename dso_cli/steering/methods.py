"""Fitting several methods on one model: the activations they all read, recorded in one run.

An :class:`ActivationStore` shared by several fits (after :func:`prefetch_for`) runs the model over the
training items once for all of them; each method's :meth:`SteeringMethod.records` says what it reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dso_cli.models.loading import LoadedModel
from dso_cli.steering.activations import ActivationStore
from dso_cli.steering.method import SteeringMethod


def prefetch_for(
    methods: Sequence[SteeringMethod],
    loaded: LoadedModel,
    store: ActivationStore,
    norm_modules: Any = None,
    can_select: bool = True,
) -> None:
    """Record every activation the closed-form ``methods`` will need, in one run over the items."""
    outputs: list[str] = []
    inputs: list[str] = []
    for method in methods:
        out, inp = method.records(loaded.model, norm_modules, can_select)
        outputs += out
        inputs += inp
    store.prefetch(outputs=list(dict.fromkeys(outputs)), inputs=list(dict.fromkeys(inputs)))
