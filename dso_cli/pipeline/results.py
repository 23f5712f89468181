"""Result files: the ``sweep.csv`` columns, Markdown tables, and CSV rows merged in as they are measured."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from dso_cli.benchmarks.schema import item_attribute, member_key
from dso_cli.evaluation import Metric, Scores, default_metrics, metric_columns
from dso_cli.evaluation.decisions import DECISION_COLUMNS, DECISION_METRICS, ItemCounts
from dso_cli.evaluation.metric import compute_all
from dso_cli.io import atomic_write, locked
from dso_cli.metrics import group_selection_rates

ROW_KEY = ["method", "alpha", "benchmark", "attribute", "split"]
GROUP_COLUMNS = [
    "method", "benchmark", "attribute", "split", "alpha",
    "group", "selection_rate", "selection_rate_se", "chosen_rate", "n_items",
]  # fmt: skip
"""The columns of ``<verb>_groups.csv``: each group's selection rate on ambiguous items, per strength."""
GROUP_KEY = ["method", "benchmark", "attribute", "split", "alpha", "group"]


def result_columns(metrics: Sequence[Metric]) -> list[str]:
    """A result file's columns: which method, strength, benchmark, attribute and split, then the metrics' own."""
    return [*ROW_KEY, *metric_columns(metrics)]


SWEEP_COLUMNS = result_columns(default_metrics())
"""The columns of ``sweep.csv`` and ``compare.csv`` with the built-in metrics (a user's metrics follow)."""


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], digits: int = 3) -> str:
    """A GitHub-flavoured Markdown table of ``columns`` (floats rounded to ``digits``)."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return "nan" if value != value else f"{value:.{digits}f}"
        return str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def merge_into_csv(path: Path, new: pd.DataFrame, key: Sequence[str], *, sort: bool = False) -> None:
    """Rewrite ``path`` atomically, under its lock: ``new`` rows replace the rows with the same ``key``,
    the other rows (other splits, benchmarks or strengths, perhaps written meanwhile by another verb)
    are kept. The file is re-read under the lock, never merged against a copy read earlier."""
    key = list(key)
    with locked(path):
        current = pd.read_csv(path) if path.is_file() else pd.DataFrame(columns=new.columns)
        on = [k for k in key if k in current.columns]  # a key column the file predates tells no rows apart
        current = current.reindex(columns=new.columns)
        kept = current.merge(new[on].drop_duplicates(), on=on, how="left", indicator=True)
        kept = kept[kept["_merge"] == "left_only"].drop(columns="_merge")
        frame = pd.concat([kept, new], ignore_index=True) if len(kept) else new
        if sort:
            frame = frame.sort_values(key, kind="stable")
        atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False))


class RowWriter:
    """The rows of one result CSV, merged into the file as each is measured: an interruption loses at
    most the row being measured, and rows of other splits, strengths or verbs are kept. ``on_first``
    runs before the first row is written (the verb's provenance goes with its first result)."""

    def __init__(
        self,
        path: Path,
        columns: Sequence[str],
        key: Sequence[str],
        *,
        sort: bool = False,
        on_first: Callable[[], None] | None = None,
    ) -> None:
        self.path, self.columns, self.key, self.sort = path, list(columns), list(key), sort
        self.rows: list[dict[str, Any]] = []
        self._on_first = on_first

    def add(self, row: Mapping[str, Any]) -> None:
        if not self.rows and self._on_first is not None:
            self._on_first()
        self.rows.append(dict(row))
        merge_into_csv(self.path, pd.DataFrame(self.rows).reindex(columns=self.columns), self.key, sort=self.sort)

    def __bool__(self) -> bool:
        return bool(self.rows)


def attribute_of(items: Sequence[Mapping[str, Any]]) -> str:
    """The protected attribute ``items`` ask about (``gender``), or several joined (``gender+race``)."""
    return "+".join(dict.fromkeys(item_attribute(item) for item in items))


def by_member(items: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str], list[Any]]:
    """A split's items per (benchmark, attribute), in order: one group, except for a mixture of
    benchmarks or of attributes, whose members each get rows of their own."""
    groups: dict[tuple[str, str], list[Any]] = {}
    for item in items:
        groups.setdefault(member_key(item), []).append(item)
    return groups


FORMAT_COLUMNS = ["method", "benchmark", "attribute", "split", "alpha", "answer_format", *DECISION_COLUMNS]
"""The columns of ``<verb>_formats.csv``: the decision metrics per answer-format family."""


def format_rows(head: Mapping[str, Any], scores: Scores) -> list[dict[str, Any]]:
    """The ``<verb>_formats.csv`` rows of one result row: the decision metrics on each answer-format
    family's items (none where the items are asked in fewer than two families)."""
    families = sorted({item.get("answer_format", "") for item in scores.items})
    if len(families) < 2:
        return []
    rows = []
    for family in families:
        keep = [i for i, item in enumerate(scores.items) if item.get("answer_format", "") == family]
        part = Scores([scores.items[i] for i in keep], scores.probs[keep],
                      None if scores.base_probs is None else scores.base_probs[keep], strength=scores.strength,
                      bootstrap_reps=scores.bootstrap_reps, seed=scores.seed)  # fmt: skip
        rows.append(dict(head, answer_format=family, **compute_all([*DECISION_METRICS, ItemCounts()], part)))
    return rows


def group_rows(head: Mapping[str, Any], scores: Scores) -> list[dict[str, Any]]:
    """The ``<verb>_groups.csv`` rows of one result row (``head``: method, benchmark, attribute, split,
    alpha) from its scores."""
    return [dict(head, **rate) for rate in group_selection_rates(scores.items, scores.probs)]
