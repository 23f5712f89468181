"""What each training step draws: stratified batches that save and restore their position, and the
base model's cached log-probabilities."""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from dso_cli.benchmarks.schema import DecisionItem, member_key
from dso_cli.errors import DsoError
from dso_cli.rl.config import TrainConfig
from dso_cli.scoring import OptionScorer


class BatchSampler:
    """Stratified batches: ``occupations_per_batch`` clusters (occupations), whole counterbalanced pairs
    of each (a scenario asked in several answer formats comes whole: ``scenario_id``); with several
    benchmarks (a mixture) the clusters are taken from each benchmark in turn."""

    def __init__(self, items: Sequence[DecisionItem], cfg: TrainConfig, rng: random.Random) -> None:
        self.rng = rng
        self.cfg = cfg
        pairs: dict[str, dict[str, list[DecisionItem]]] = defaultdict(lambda: defaultdict(list))
        benchmark_of: dict[str, str] = {}
        self.unambiguous = [item for item in items if not item["ambiguous"]]
        self.evidence = evidence_pools(self.unambiguous)
        for item in items:
            if item["ambiguous"]:
                pairs[item["cluster"]][item.get("scenario_id") or item["pair_id"]].append(item)
                benchmark_of[item["cluster"]] = item["benchmark"]
        self.pairs = {occ: list(by_id.values()) for occ, by_id in pairs.items()}
        if not self.pairs:
            raise DsoError("the training split has no ambiguous items to debias")
        self.benchmarks = sorted(set(benchmark_of.values()))
        self.members = member_labels([item for item in items if item["ambiguous"]])
        self.clusters = {b: sorted(o for o, ob in benchmark_of.items() if ob == b) for b in self.benchmarks}
        self._queues: dict[str, list[str]] = {b: [] for b in self.benchmarks}
        self._turn = 0

    def ambiguous_batch(self) -> list[DecisionItem]:
        batch = []
        for _ in range(min(self.cfg.occupations_per_batch, len(self.pairs))):
            bench = self.benchmarks[self._turn % len(self.benchmarks)]
            self._turn += 1
            queue = self._queues[bench]
            if not queue:
                queue[:] = self.clusters[bench]
                self.rng.shuffle(queue)
            occ = queue.pop()
            for pair in self.rng.sample(self.pairs[occ], min(self.cfg.pairs_per_occupation, len(self.pairs[occ]))):
                batch.extend(pair)
        return batch

    def unambiguous_batch(self) -> list[DecisionItem]:
        """``unambiguous_per_batch`` items as whole counterbalanced pairs (the correct person listed first
        in one item and second in its twin), the pairs dealt evenly between those whose correct person
        is the stereotyped one and those where it is the counter-stereotyped one: neither a position
        rule nor a stereotype can score above chance on the batch."""
        if not self.evidence:
            return []
        n_pairs = max(1, self.cfg.unambiguous_per_batch // 2)
        pools = sorted(self.evidence)
        start = self.rng.randrange(len(pools))  # an odd count's extra pair goes to either pool
        want = {pool: sum(1 for j in range(n_pairs) if pools[(start + j) % len(pools)] == pool) for pool in pools}
        batch = []
        for pool in pools:
            for pair in self.rng.sample(self.evidence[pool], min(want[pool], len(self.evidence[pool]))):
                batch.extend(pair)
        return batch

    def state(self) -> dict[str, Any]:
        """What a checkpoint needs besides the RNG: the clusters still queued in this round."""
        return {"queues": {b: list(q) for b, q in self._queues.items()}, "turn": self._turn}

    def restore(self, state: Mapping[str, Any]) -> None:
        if set(state.get("queues", {})) != set(self.benchmarks):
            raise DsoError("the checkpoint was written for another set of benchmarks")
        self._queues = {b: list(q) for b, q in state["queues"].items()}
        self._turn = int(state["turn"])


class BaseCache:
    """What the unsteered model gives, computed once and reused: option log-probabilities per item, and
    (with ``text``) the last hidden states of every KL passage and prompt, from which the text KL
    rebuilds its full-vocabulary targets with one output-head product instead of a forward pass through
    the model. Exact: the same hidden states the forward pass gave, up to the rounding of the batch
    they were computed in."""

    def __init__(self, scorer: OptionScorer, text: bool = True) -> None:
        self.scorer = scorer
        self._lp: dict[str, Tensor] = {}
        self.cache_text = text and not scorer.full_forward  # a model scored in full keeps logits, too big

    def __call__(self, items: Sequence[DecisionItem]) -> Tensor:
        todo = [item for item in items if item["id"] not in self._lp]
        if todo:
            for item, row in zip(todo, self.scorer.logprobs(todo).detach(), strict=True):
                self._lp[item["id"]] = row
        width = max(self._lp[item["id"]].shape[0] for item in items)
        rows = [
            torch.nn.functional.pad(self._lp[i["id"]], (0, width - self._lp[i["id"]].shape[0]), value=-math.inf)
            for i in items
        ]
        return torch.stack(rows)

    def text_hidden(self, seqs: list[list[int]]) -> list[Tensor]:
        """The base model's last hidden states ``[len, hidden]`` of each sequence (call it with the
        steering off), from the cache where present (without it: one forward pass now)."""
        keys = [text_key(s) for s in seqs]
        todo = {key: s for key, s in zip(keys, seqs, strict=True) if key not in self._lp}
        found: dict[str, Tensor] = {}
        if todo:
            found = self._hidden_now(list(todo), list(todo.values()))
            if self.cache_text:
                self._lp.update(found)
        return [self._lp[key] if key in self._lp else found[key] for key in keys]

    def _hidden_now(self, keys: list[str], seqs: list[list[int]]) -> dict[str, Tensor]:
        """One pass of the base model over ``seqs``: over prefix trees when caching (a shared prefix once,
        no padding), else over right-padded rows (as earlier versions' step)."""
        with torch.no_grad():
            if self.cache_text and self.scorer.sequence_trees_apply(seqs):
                return {keys[index]: hidden[nodes].clone()
                        for hidden, paths in self.scorer.sequence_trees(seqs) for index, nodes in paths}  # fmt: skip
            hidden, lengths = self.scorer.token_hidden(seqs)
        return {key: row[:n].clone() for key, row, n in zip(keys, hidden, lengths.tolist(), strict=True)}

    def state(self) -> dict[str, Tensor]:
        """The cached rows, for a checkpoint: batch composition changes float rounding, so a resumed run
        reuses the exact values rather than recomputing them."""
        return dict(self._lp)

    def restore(self, state: Mapping[str, Tensor]) -> None:
        self._lp.update({key: row.to(self.scorer.device) for key, row in state.items()})


def evidence_pools(unambiguous: Sequence[DecisionItem]) -> dict[str, list[list[DecisionItem]]]:
    """The unambiguous items as counterbalanced pairs (``pair_id``), pooled by what the prompt states:
    ``pro`` (the correct person is the stereotyped one), ``anti`` (the counter-stereotyped one), or
    ``undirected`` (no stereotype direction). Empty pools are left out."""
    pairs: dict[str, list[DecisionItem]] = defaultdict(list)
    for item in unambiguous:
        pairs[item["pair_id"]].append(item)
    pools: dict[str, list[list[DecisionItem]]] = defaultdict(list)
    for pair in pairs.values():
        first = pair[0]
        if first["correct"] >= 0 and first["correct"] == first["pro_option"]:
            pools["pro"].append(pair)
        elif first["correct"] >= 0 and first["correct"] == first["anti_option"]:
            pools["anti"].append(pair)
        else:
            pools["undirected"].append(pair)
    return dict(pools)


def member_labels(items: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str], str]:
    """The training log's name of each member of a mixture of benchmarks and/or attributes: the parts
    that differ between the members (``synthbias``, ``race``, ``bbq_race``); empty for one member."""
    members = sorted({member_key(item) for item in items})
    if len(members) < 2:
        return {}
    vary = [len({m[i] for m in members}) > 1 for i in range(2)]
    return {m: "_".join(part for part, varies in zip(m, vary, strict=True) if varies) for m in members}


def text_key(seq: Sequence[int]) -> str:
    """The cache key of a token sequence (kept apart from item ids, which never start with ``tokens:``)."""
    return "tokens:" + ",".join(map(str, seq))
