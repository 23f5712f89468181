"""Splitting counterbalanced pairs into train/val/test, stratified by occupation (or another cluster)."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import TypeVar

from dso_cli.errors import DsoError

T = TypeVar("T")


def deal_per_cluster(
    pools: Mapping[str, Sequence[T]], per_cluster: Sequence[tuple[str, int]], rng: random.Random
) -> tuple[dict[str, list[T]], dict[str, list[T]]]:
    """Shuffle each cluster's pairs and deal ``n`` of them to each named split, in order.

    Returns the splits and, per cluster, the pairs left over (the pool that training draws from).
    """
    splits: dict[str, list[T]] = {name: [] for name, _ in per_cluster}
    left: dict[str, list[T]] = {}
    for cluster in sorted(pools):
        pairs = list(pools[cluster])
        rng.shuffle(pairs)
        start = 0
        for name, n in per_cluster:
            splits[name] += pairs[start : start + n]
            start += n
        left[cluster] = pairs[start:]
    return splits, left


def take_stratified(pools: Mapping[str, Sequence[T]], n_pairs: int, rng: random.Random, *, what: str) -> list[T]:
    """``n_pairs`` pairs spread as evenly as possible over the clusters (pools are pre-shuffled).

    Clusters with too few pairs give what they have and the others make up the difference, so the
    requested size is met whenever the pools hold enough pairs in total.
    """
    total = sum(len(p) for p in pools.values())
    if n_pairs > total:
        raise DsoError(f"{what}: asked for {n_pairs} pairs but only {total} are left after val/test; lower the size")
    want = dict.fromkeys(pools, 0)
    remaining = n_pairs
    while remaining:
        open_clusters = sorted(c for c in pools if want[c] < len(pools[c]))
        share, extra = divmod(remaining, len(open_clusters))
        lucky = set(rng.sample(open_clusters, extra))
        for c in open_clusters:
            add = min(share + (c in lucky), len(pools[c]) - want[c])
            want[c] += add
            remaining -= add
    return [pair for c in sorted(pools) for pair in pools[c][: want[c]]]
