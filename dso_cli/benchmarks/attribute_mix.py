"""One benchmark over several protected attributes (``bias.attribute=[gender,race]``), so that one
transform is trained for all of them at once.

Each attribute's splits are built exactly as a run of that attribute alone builds them, then joined
split by split. Clusters, pairs and ids are prefixed with the attribute (``race:nurse``), so that
gender's nurse and race's nurse are separate clusters of POB and of the trainer's stratified batches;
an item's ``attribute`` field says which attribute it asks about, and ``dso eval`` / ``dso sweep``
report each attribute's rows. A split exists when any attribute has it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import datasets

from dso_cli.benchmarks.attributes import attribute_list
from dso_cli.benchmarks.schema import CLUSTER_SEPARATOR, join_splits

BuildOne = Callable[[str], datasets.DatasetDict]


def over_attributes(build_one: BuildOne, value: Any, key: str = "bias.attribute") -> datasets.DatasetDict:
    """``build_one(attribute)`` for the one attribute ``value`` names, or the join over several."""
    attributes = attribute_list(value, key)
    if len(attributes) == 1:
        return build_one(attributes[0])
    return join_splits({attribute: build_one(attribute) for attribute in attributes}, prefixed)


def prefixed(item: dict[str, Any], attribute: str) -> dict[str, Any]:
    """``item`` with its cluster, pair and id under ``attribute`` (``race:nurse``, ``race:occupation/...``)."""
    return dict(
        item,
        cluster=f"{attribute}{CLUSTER_SEPARATOR}{item['cluster']}",
        pair_id=f"{attribute}{CLUSTER_SEPARATOR}{item['pair_id']}",
        id=f"{attribute}{CLUSTER_SEPARATOR}{item['id']}",
    )
