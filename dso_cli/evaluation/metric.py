"""What a metric is: a named object that turns one strength's scores into result columns.

Every column of ``sweep.csv``, ``compare.csv``, ``eval.csv`` and ``prune.csv`` comes from a
:class:`Metric`; a user's own metric class joins through ``sweep.extra_metrics=[pkg.Class]`` (and the
same key of ``eval`` and ``compare``), trusted through ``allow_targets`` as methods are.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, ClassVar

import numpy as np
from torch import Tensor

from dso_cli.benchmarks.schema import DecisionItem
from dso_cli.errors import DsoError
from dso_cli.metrics import PairResampler, PolicyView
from dso_cli.targets import check_trusted, import_class


@dataclass(frozen=True)
class SequenceScores:
    """Per token sequence (a held-out passage, a benchmark prompt) at one strength: the summed
    next-token NLL, the number of predicted tokens, and the mean per-token full-vocabulary
    ``KL(steered ‖ base)``. Sequences are the units of the standard errors."""

    nll_sum: np.ndarray
    n_tokens: np.ndarray
    kl: np.ndarray


@dataclass(frozen=True)
class ProbeScores:
    """A metric's own probe items (:meth:`Metric.probe_items`) and the option policy on them."""

    items: Sequence[DecisionItem]
    probs: Tensor


@dataclass(frozen=True)
class Scores:
    """Everything a metric reads at one strength on one set of decision items.

    ``probs`` is the option policy ``[n, k]`` at ``strength`` (padded options have probability 0),
    ``base_probs`` the same at strength 0. ``sequences`` holds the token-level scores a text metric
    needs, by source: ``"text"`` (held-out neutral passages) and ``"prompts"`` (the items' own prompts),
    where they were measured; ``probes`` the policy on each metric's own probe items, by metric name.
    ``bootstrap_reps`` and ``seed`` fix the standard errors' resampling.
    """

    items: Sequence[DecisionItem]
    probs: Tensor
    base_probs: Tensor | None = None
    strength: float = 0.0
    sequences: Mapping[str, SequenceScores] = field(default_factory=dict)
    probes: Mapping[str, ProbeScores] = field(default_factory=dict)
    bootstrap_reps: int = 1000
    seed: int = 0

    @cached_property
    def view(self) -> PolicyView:
        """The items' and policy's arrays (groups, gaps, choices), extracted once for all metrics."""
        return PolicyView(self.items, self.probs)

    @cached_property
    def ambiguous_pairs(self) -> PairResampler:
        """One draw of counterbalanced pairs within occupations over the ambiguous items, shared by every
        metric's standard error so that they resample the same pairs."""
        v = self.view
        rng = np.random.default_rng(self.seed)
        return PairResampler(v.cluster[v.ambiguous], v.pair[v.ambiguous], self.bootstrap_reps, rng)

    def pair_bootstrap_se(self, statistic: str, values: np.ndarray) -> float:
        """Bootstrap SE over :attr:`ambiguous_pairs` of ``statistic`` (``"pob"`` of per-item gaps,
        ``"head_to_head"`` of per-item leans ``[n, group pairs]``, or ``"mean"`` of per-item values, NaN
        entries left out); NaN where some occupation has one pair
        (resampling it shows no variation) or no value is finite, 0 with fewer than two resamples."""
        if not len(values) or np.isnan(values).all():
            return math.nan
        if self.ambiguous_pairs.fewest_pairs < 2:
            return math.nan
        if self.bootstrap_reps < 2:
            return 0.0
        resampled = {"pob": self.ambiguous_pairs.pob, "head_to_head": self.ambiguous_pairs.head_to_head}
        draws = resampled.get(statistic, self.ambiguous_pairs.mean)(values)
        return float(np.std(draws, ddof=1))


class Metric:
    """A result column family computed from :class:`Scores`.

    Subclasses set ``name`` and, when they write more than the one column ``name``, ``columns`` (the
    CSV columns, in order); ``compute`` returns a value for each column (NaN where it does not apply,
    e.g. no ambiguous items). A metric is stateless: one instance serves every split and strength.
    """

    name: ClassVar[str] = ""
    columns: ClassVar[tuple[str, ...]] = ()

    def compute(self, scores: Scores) -> dict[str, float]:
        raise NotImplementedError

    def probe_items(self, items: Sequence[DecisionItem]) -> list[DecisionItem]:
        """Items of its own this metric reads beside ``items`` (e.g. pronoun probes of the items'
        occupations): the evaluator scores them at every strength into ``Scores.probes[name]``."""
        return []

    @classmethod
    def output_columns(cls) -> tuple[str, ...]:
        return cls.columns or (cls.name,)

    def __call__(self, scores: Scores) -> dict[str, float]:
        """``compute``, checked: a metric writes exactly the columns it declares."""
        values = dict(self.compute(scores))
        declared = self.output_columns()
        extra = [k for k in values if k not in declared]
        if extra:
            raise DsoError(
                f"metric {type(self).__name__} returned {extra[0]!r}, which it does not declare "
                f"(declared: {', '.join(declared)}); list every column in its `columns`"
            )
        return {column: values.get(column, math.nan) for column in declared}


def metric_columns(metrics: Iterable[Metric]) -> list[str]:
    """The columns a list of metrics writes, in order, each once."""
    out: list[str] = []
    for metric in metrics:
        out += [c for c in metric.output_columns() if c not in out]
    return out


def compute_all(metrics: Iterable[Metric], scores: Scores) -> dict[str, Any]:
    """Every metric's columns at ``scores``, merged in order."""
    row: dict[str, Any] = {}
    for metric in metrics:
        row.update(metric(scores))
    return row


def load_metrics(paths: Sequence[str], where: str) -> list[Metric]:
    """Instances of the metric classes named by dotted ``paths`` (``pkg.module.Class``), each trusted
    (inside ``dso_cli`` or under ``allow_targets``); ``where`` names the config key for the errors."""
    out = []
    for path in paths:
        path = str(path)
        check_trusted(path, where)
        cls = import_class(path, Metric, where)
        if not cls.output_columns()[0]:
            raise DsoError(f"{where}: {path!r} sets no `name` (the column it writes)")
        out.append(cls())
    return out
