"""The items a transform was trained on, recorded in its artifact, and the refusal to evaluate on them.

Splits are rebuilt from the run's config whenever a later verb evaluates, so an override that changes
how they are drawn (``bias.test_pairs_per_occupation=8``, ``bias.seed=1``) would quietly move training
items into the test split. The artifact keeps the training item ids and their digest; evaluating verbs
check every split they score against them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from dso_cli.errors import DsoError

RECORD = "train_items"


def training_record(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """What the artifact keeps of its training items: their sorted ids, count and sha256."""
    ids = sorted({str(item["id"]) for item in items})
    return {"n": len(ids), "sha256": _digest(ids), "ids": ids}


def _digest(ids: Sequence[str]) -> str:
    return hashlib.sha256(json.dumps(list(ids), separators=(",", ":")).encode()).hexdigest()


def split_overrides(overrides: Sequence[str]) -> list[str]:
    """The benchmark settings typed on this command line (the ones that can redraw the splits)."""
    return [o.lstrip("+~") for o in overrides if o.lstrip("+~").startswith(("bias_benchmark.", "bias."))]


def check_no_leakage(
    manifest: Mapping[str, Any],
    evaluated: Mapping[str, Sequence[Mapping[str, Any]]],
    overrides: Sequence[str] = (),
    rebuilt_train: Sequence[Mapping[str, Any]] | None = None,
) -> str | None:
    """Refuse (one line) an evaluated split that shares an item with the run's training items, and a
    typed benchmark override that redraws the training split. Returns a note when the run records no
    training items (made by an older dso) or its benchmark now draws other training items untold."""
    record = manifest.get(RECORD)
    if not record:
        return "the artifact records no training items (made by an older dso): split overlap not checked"
    trained = set(record["ids"])
    typed = split_overrides(overrides)
    cause = f" ({', '.join(typed)} redraws the splits)" if typed else ""
    for split, items in evaluated.items():
        shared = sum(str(item["id"]) in trained for item in items)
        if shared:
            raise DsoError(
                f"split {split} shares {shared} of its {len(items)} items with the {len(trained)} items this run "
                f"was trained on{cause}; evaluate with the run's own benchmark settings"
            )
    if rebuilt_train is not None:
        now = training_record(rebuilt_train)
        if now["sha256"] != record["sha256"]:
            if typed:
                raise DsoError(
                    f"{', '.join(typed)} changes the training split this run was trained on "
                    f"({record['n']} items, now {now['n']}); drop it to evaluate the run's own held-out splits"
                )
            return "this benchmark now draws other training items than the run was trained on (none is evaluated)"
    return None
