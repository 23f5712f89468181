"""Packing decision items into prefix trees, so tokens that items share are run through the model once.

Benchmark prompts repeat long prefixes: the chat template's system turn, then a scenario sentence that
only later names the occupation. A packed row holds the token trie of several items (each item's
prompt, then every option's tokens but the last), every node once. With a tree attention mask (a
node attends to itself and its ancestors) and the node's depth as its position, each node's hidden
state is exactly what it is when its item runs alone, so one forward over the row scores every option
of every item in it. Items are packed in lexicographic order of their tokens, which puts items that
share prefixes next to each other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor


@dataclass
class PackedRow:
    """One forward pass: trie nodes (token, parent, depth) and the option tokens they predict."""

    tokens: list[int] = field(default_factory=list)
    parents: list[int] = field(default_factory=list)  # -1 for a root
    depths: list[int] = field(default_factory=list)
    # (predicting node, predicted token, item index, option index); one per option token
    targets: list[tuple[int, int, int, int]] = field(default_factory=list)
    # (node of the option's last token, item index, option index); only when options are fed in full
    option_ends: list[tuple[int, int, int]] = field(default_factory=list)
    items: list[int] = field(default_factory=list)
    _children: dict[tuple[int, int], int] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.tokens)

    def new_nodes(self, prompt: Sequence[int], options: Sequence[Sequence[int]], feed_last: bool = False) -> int:
        """How many nodes adding this item would create (nothing is added)."""
        new: dict[tuple[int, int], int] = {}  # node not yet in the row -> placeholder id (< -1)
        for path in _paths(prompt, options, feed_last):
            node = -1
            for token in path:
                key = (node, token)
                child = self._children.get(key)
                if child is None:
                    child = new.setdefault(key, -2 - len(new))
                node = child
        return len(new)

    def add(self, item: int, prompt: Sequence[int], options: Sequence[Sequence[int]], feed_last: bool = False) -> None:
        """Insert an item; ``feed_last`` also runs each option's last token (to read activations there)."""
        prompt_end = self._insert(-1, prompt)
        for k, option in enumerate(options):
            node = prompt_end
            for t, token in enumerate(option):
                self.targets.append((node, token, item, k))
                if t < len(option) - 1 or feed_last:
                    node = self._insert(node, option[t : t + 1])
            if feed_last:
                self.option_ends.append((node, item, k))
        self.items.append(item)

    def _insert(self, node: int, tokens: Sequence[int]) -> int:
        for token in tokens:
            key = (node, token)
            child = self._children.get(key)
            if child is None:
                child = len(self.tokens)
                self._children[key] = child
                self.tokens.append(token)
                self.parents.append(node)
                self.depths.append(0 if node < 0 else self.depths[node] + 1)
            node = child
        return node

    def path_nodes(self, tokens: Sequence[int]) -> list[int]:
        """The node of each token of a path the row holds (an added item's prompt)."""
        node, nodes = -1, []
        for token in tokens:
            node = self._children[(node, token)]
            nodes.append(node)
        return nodes

    def attended_pairs(self) -> int:
        """Query-key pairs the row's attention needs (each node with itself and its ancestors)."""
        return sum(self.depths) + len(self.depths)


def _paths(prompt: Sequence[int], options: Sequence[Sequence[int]], feed_last: bool) -> list[list[int]]:
    """The token paths an item adds to the trie: its prompt and each option (without its last token
    unless ``feed_last``)."""
    cut = 0 if feed_last else 1
    return [list(prompt)] + [list(prompt) + list(option[: len(option) - cut]) for option in options]


def pack(
    items: Sequence[tuple[Sequence[int], Sequence[Sequence[int]]]], max_tokens: int, feed_last: bool = False
) -> tuple[list[PackedRow], list[int]]:
    """Greedily pack ``(prompt ids, option ids)`` items, in lexicographic order of their tokens, into
    rows of at most ``max_tokens`` nodes (an item larger than that gets a row of its own). With
    ``feed_last`` every option token becomes a node, so activations can be read at options' ends.

    Returns the rows and the order in which the items were packed.
    """
    order = sorted(range(len(items)), key=lambda i: (tuple(items[i][0]), tuple(map(tuple, items[i][1]))))
    rows: list[PackedRow] = []
    row = PackedRow()
    for i in order:
        prompt, options = items[i]
        if row.items and len(row) + row.new_nodes(prompt, options, feed_last) > max_tokens:
            rows.append(row)
            row = PackedRow()
        row.add(i, prompt, options, feed_last)
    if row.items:
        rows.append(row)
    return rows, order


def tree_mask(parents: Sequence[int]) -> Tensor:
    """``[n, n]`` boolean mask: node ``i`` may attend to node ``j`` iff ``j`` is ``i`` or an ancestor.

    Parents precede their children, so each row is its parent's row plus the node itself.
    """
    n = len(parents)
    mask = np.zeros((n, n), dtype=bool)
    for i, parent in enumerate(parents):
        if parent >= 0:
            mask[i, : parent + 1] = mask[parent, : parent + 1]
        mask[i, i] = True
    return torch.from_numpy(mask)


def additive_mask(mask: Tensor, dtype: torch.dtype, device: torch.device) -> Tensor:
    """A boolean ``[n, n]`` mask as the ``[1, 1, n, n]`` additive float mask attention layers accept
    (0 where allowed, the dtype's minimum elsewhere): eager attention adds it, SDPA takes it as is."""
    out = torch.zeros(mask.shape, dtype=dtype, device=device)
    out.masked_fill_(~mask.to(device), torch.finfo(dtype).min)
    return out[None, None]
