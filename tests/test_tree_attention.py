"""Chunked tree attention: each query chunk sees exactly the keys its nodes may attend to, the model is
restored afterwards, and a model on which chunking misbehaves keeps dense tree attention."""

import random

import pytest
import torch

from dso_cli.errors import DsoError
from dso_cli.scoring import OptionScorer, tree_attention
from dso_cli.scoring.prefix_tree import pack, tree_mask
from dso_cli.scoring.tree_attention import attention_implementation, chunked_tree_attention, plan_tree_attention
from tests.conftest import build_tiny_model
from tests.test_prefix_tree import random_items


@pytest.mark.parametrize("seed", range(10))
def test_plan_covers_every_allowed_pair_and_only_needed_keys(seed):
    rng = random.Random(seed)
    (row, *_), _ = pack(random_items(rng, rng.randrange(2, 30)), 10_000)
    mask = tree_mask(row.parents)
    chunk = rng.choice([1, 3, 8, 64])
    plan = plan_tree_attention(mask, chunk, "sdpa", torch.float32, torch.device("cpu"))
    assert [(s, e) for s, e, _, _ in plan.chunks] == [(s, min(s + chunk, len(row))) for s in range(0, len(row), chunk)]
    for start, end, keys, additive in plan.chunks:
        allowed = mask[start:end]
        assert set(keys.tolist()) == set(torch.nonzero(allowed.any(0))[:, 0].tolist())  # needed keys, no others
        assert torch.equal(additive[0, 0] == 0, allowed[:, keys])  # the mask slice on those keys
    assert int(mask.sum()) <= plan.computed_pairs <= len(row) ** 2


def test_context_restores_the_implementation_and_passes_other_calls_through(tokenizer):
    model = build_tiny_model("llama", tokenizer)
    before = attention_implementation(model)
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        reference = model(input_ids=ids).logits
        mask = tree_mask([-1, 0, 1])
        with chunked_tree_attention(model, plan_tree_attention(mask, 2, before, torch.float32, torch.device("cpu"))):
            assert attention_implementation(model) == tree_attention.IMPLEMENTATION
            torch.testing.assert_close(model(input_ids=ids).logits, reference)  # 5 tokens: not the planned tree
    assert attention_implementation(model) == before


def test_failing_chunked_attention_keeps_dense_tree_attention(tokenizer, items, monkeypatch):
    model = build_tiny_model("llama", tokenizer)
    real = tree_attention._chunked_attention

    def off_by_a_bit(*args, **kwargs):
        out, weights = real(*args, **kwargs)
        return out * 1.01, weights

    monkeypatch.setattr(tree_attention, "_chunked_attention", off_by_a_bit)
    scorer = OptionScorer(model, tokenizer, tree_attention_chunk=4)
    assert scorer.prefix_tree and scorer.attention_chunk == 0
    rows = OptionScorer(model, tokenizer, prefix_tree=False)
    torch.testing.assert_close(scorer.logprobs(items), rows.logprobs(items), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("bad", [-1, "some", 1.5])
def test_bad_chunk_is_one_line(tokenizer, bad):
    with pytest.raises(DsoError, match="tree_attention_chunk"):
        OptionScorer(build_tiny_model("llama", tokenizer), tokenizer, tree_attention_chunk=bad)
