"""Attention over a packed prefix tree that skips the query-key pairs the tree mask rules out.

A tree's mask lets each node see only itself and its ancestors: in a 512-node tree of benchmark
items that is about a sixth of the square, yet a dense attention kernel given that mask computes the
whole square (on CPU it was over a quarter of scoring time). Nodes are stored parents first and items
that share prefixes next to each other, so a run of consecutive nodes (a query chunk) has a small set
of ancestors. Each chunk attends only to that set, through the model's own attention function with
the matching slice of the mask, so the result is the same computation restricted to the keys that
matter (softmax rows are independent of each other). The model's attention implementation is switched
to a registered wrapper only inside :func:`chunked_tree_attention` and only the current tree's forward
pass (query length = tree size) is chunked; every other call goes straight to the original function.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from dso_cli.scoring.prefix_tree import additive_mask

IMPLEMENTATION = "dso_tree_chunks"


@dataclass
class TreeAttentionPlan:
    """Query chunks ``[start, end)`` of an ``n``-node tree, the key nodes each needs and its mask slice."""

    n: int
    chunks: list[tuple[int, int, Tensor, Tensor]]
    inner: str  # the model's own attention implementation

    @property
    def computed_pairs(self) -> int:
        return sum((end - start) * len(keys) for start, end, keys, _ in self.chunks)


def plan_tree_attention(
    mask: Tensor, chunk: int, inner: str, dtype: torch.dtype, device: torch.device
) -> TreeAttentionPlan:
    """Split the ``[n, n]`` boolean tree ``mask`` into query chunks of ``chunk`` nodes and the union
    of the keys each chunk's nodes may see."""
    n = mask.shape[0]
    chunks = []
    for start in range(0, n, chunk):
        end = min(n, start + chunk)
        keys = torch.nonzero(mask[start:end].any(0))[:, 0]
        chunks.append((start, end, keys.to(device), additive_mask(mask[start:end][:, keys], dtype, device)))
    return TreeAttentionPlan(n, chunks, inner)


_ACTIVE: ContextVar[TreeAttentionPlan | None] = ContextVar("dso_tree_attention_plan", default=None)


def _inner_function(name: str, module: nn.Module) -> Callable:
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    own_eager = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    if name == "eager":
        if own_eager is None:
            raise NotImplementedError(f"{type(module).__name__}: no eager attention function to chunk")
        return own_eager
    return ALL_ATTENTION_FUNCTIONS.get_interface(name, own_eager)


def _chunked_attention(
    module: nn.Module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None, **kwargs
) -> tuple[Tensor, None]:
    """The registered attention function: the model's own one, per query chunk on its keys only."""
    plan = _ACTIVE.get()
    if plan is None:
        raise RuntimeError(f"attention implementation {IMPLEMENTATION!r} is only usable inside chunked_tree_attention")
    inner = _inner_function(plan.inner, module)
    if query.shape[2] != plan.n or key.shape[2] != plan.n:  # not the tree's forward pass
        return inner(module, query, key, value, attention_mask, **kwargs)
    outputs = [
        inner(module, query[:, :, start:end], key.index_select(2, keys), value.index_select(2, keys), mask, **kwargs)[0]
        for start, end, keys, mask in plan.chunks
    ]
    return torch.cat(outputs, dim=1), None  # attention functions return [batch, queries, heads, head_dim]


def _register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(IMPLEMENTATION, _chunked_attention)


def attention_config(model: nn.Module):
    """The config object the language backbone's attention layers read their implementation from."""
    return getattr(model.config, "text_config", None) or model.config


def attention_implementation(model: nn.Module) -> str:
    return str(attention_config(model)._attn_implementation or "eager")


@contextmanager
def chunked_tree_attention(model: nn.Module, plan: TreeAttentionPlan) -> Iterator[None]:
    """Within the block, ``model``'s forward pass over the planned tree attends chunk by chunk."""
    _register()
    config = attention_config(model)
    previous = config._attn_implementation_internal
    token = _ACTIVE.set(plan)
    config._attn_implementation_internal = IMPLEMENTATION  # this config only, not its sub-configs
    try:
        yield
    finally:
        config._attn_implementation_internal = previous
        _ACTIVE.reset(token)
