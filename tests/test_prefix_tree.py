"""Prefix-tree packing: the trie is exact, and scoring through it equals scoring each item on its own."""

import random

import pytest
import torch

from dso_cli.errors import DsoError
from dso_cli.scoring import OptionScorer
from dso_cli.scoring.prefix_tree import pack, tree_mask
from tests.conftest import build_tiny_model
from tests.test_scoring import FAMILIES


def random_items(rng: random.Random, n: int) -> list[tuple[list[int], list[list[int]]]]:
    """Items whose prompts share prefixes of random lengths, with 1-3 options of 1-3 tokens."""
    stems = [[rng.randrange(50) for _ in range(rng.randrange(1, 8))] for _ in range(3)]
    items = []
    for _ in range(n):
        prompt = rng.choice(stems)[: rng.randrange(1, 8)] + [rng.randrange(50) for _ in range(rng.randrange(0, 4))]
        options = [[rng.randrange(50) for _ in range(rng.randrange(1, 4))] for _ in range(rng.randrange(1, 4))]
        items.append((prompt, options))
    return items


@pytest.mark.parametrize("seed", range(20))
def test_pack_builds_an_exact_trie(seed):
    rng = random.Random(seed)
    items = random_items(rng, rng.randrange(1, 30))
    budget = rng.choice([1, 8, 20, 1000])
    rows, order = pack(items, budget)
    assert sorted(order) == list(range(len(items)))
    assert sorted(i for row in rows for i in row.items) == list(range(len(items)))
    for row in rows:
        assert len(row) <= budget or len(row.items) == 1
        paths = {}  # node -> the token path from its root
        for node, (token, parent) in enumerate(zip(row.tokens, row.parents, strict=True)):
            assert parent < node
            paths[node] = (paths[parent] if parent >= 0 else ()) + (token,)
            assert row.depths[node] == len(paths[node]) - 1
        assert len(set(paths.values())) == len(row), "every prefix is one node"
        expected = set()
        for i in row.items:
            prompt, options = items[i]
            expected |= {tuple(prompt[: k + 1]) for k in range(len(prompt))}
            for option in options:
                full = prompt + option[:-1]
                expected |= {tuple(full[: k + 1]) for k in range(len(prompt), len(full))}
        assert set(paths.values()) == expected, "the row holds exactly its items' prompts and option prefixes"
        for node, token, i, k in row.targets:
            prompt, options = items[i]
            position = len(paths[node]) - len(prompt)  # which option token this node predicts
            assert paths[node] == tuple((prompt + options[k])[: len(prompt) + position])
            assert token == options[k][position]
        assert len(row.targets) == sum(len(o) for i in row.items for o in items[i][1])


@pytest.mark.parametrize("seed", range(5))
def test_tree_mask_is_the_ancestor_relation(seed):
    rng = random.Random(seed)
    rows, _ = pack(random_items(rng, 12), 1000)
    parents = rows[0].parents
    mask = tree_mask(parents)
    for i in range(len(parents)):
        ancestors, node = set(), i
        while node >= 0:
            ancestors.add(node)
            node = parents[node]
        assert {j for j in range(len(parents)) if mask[i, j]} == ancestors


@pytest.mark.parametrize("chunk", [0, 5], ids=["dense-attention", "chunked-attention"])
@pytest.mark.parametrize("family", FAMILIES)
def test_tree_scores_equal_per_item_rows(family, chunk, tokenizer, items):
    model = build_tiny_model(family, tokenizer)
    tree = OptionScorer(model, tokenizer, tree_tokens=64, tree_attention_chunk=chunk)
    rows = OptionScorer(model, tokenizer, prefix_tree=False, share_prompt=False, batch_size=1)
    assert tree.prefix_tree, f"{family}: the tree path fell back"
    assert tree.attention_chunk == chunk, f"{family}: chunked tree attention was turned off"
    encoded = [tree.encode(i) for i in items]
    if tree._fits_window(encoded):  # a sliding window shorter than the items falls back to rows
        torch.testing.assert_close(tree._score_tree(encoded, 3, None), rows.logprobs(items), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tree.logprobs(items), rows.logprobs(items), atol=1e-5, rtol=1e-5)


def test_tree_runs_shared_tokens_once(tokenizer, items):
    model = build_tiny_model("llama", tokenizer)
    tree = OptionScorer(model, tokenizer, tree_tokens=10_000)  # one tree: every shared token counted once
    rows = OptionScorer(model, tokenizer, prefix_tree=False, share_prompt=False)
    tree.logprobs(items)
    rows.logprobs(items)
    encoded = [tree.encode(i) for i in items]
    distinct = {
        tuple(path[: k + 1])
        for e in encoded
        for path in [e.prompt_ids, *(e.prompt_ids + o[:-1] for o in e.option_ids)]
        for k in range(len(path))
    }
    assert tree.stats.tokens == len(distinct)
    assert tree.stats.head_rows == sum(len(o) for e in encoded for o in e.option_ids)
    assert tree.stats.tokens < rows.stats.tokens
    assert tree.stats.forward_calls == 1


def test_tree_gradients_equal_per_item_rows(tokenizer, items):
    from dso_cli.models.layouts import find_norm_modules
    from dso_cli.steering.affine import apply_affine, init_affine_params

    model = build_tiny_model("qwen2", tokenizer)
    grads = []
    for prefix_tree, chunk in ((False, 0), (True, 0), (True, 5)):
        torch.manual_seed(0)
        params = init_affine_params(find_norm_modules(model))
        with torch.no_grad():
            for p in params.values():
                p.normal_(0, 0.1)
        scorer = OptionScorer(
            model, tokenizer, prefix_tree=prefix_tree, tree_tokens=48, batch_size=3, tree_attention_chunk=chunk
        )
        with apply_affine(model, params, 1.0):
            lp = scorer.logprobs(items, grad=True)
            (lp[torch.isfinite(lp)] * torch.linspace(-1, 1, int(torch.isfinite(lp).sum()))).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in params.values()]))
    assert grads[0].abs().sum() > 0
    for tree_grads in grads[1:]:
        torch.testing.assert_close(tree_grads, grads[0], atol=1e-5, rtol=1e-4)


def test_length_normalised_tree_scores(tokenizer, items):
    model = build_tiny_model("llama", tokenizer)
    tree = OptionScorer(model, tokenizer, length_normalize=True).logprobs(items)
    rows = OptionScorer(model, tokenizer, length_normalize=True, prefix_tree=False).logprobs(items)
    torch.testing.assert_close(tree, rows, atol=1e-5, rtol=1e-5)


def test_attention_that_ignores_the_mask_falls_back_to_rows(tokenizer, items):
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    def causal_only(module, query, key, value, attention_mask, **kwargs):
        """Plain causal attention that drops any mask it is given (as flash-attention kernels do)."""
        return sdpa_attention_forward(module, query, key, value, None, **kwargs)

    AttentionInterface.register("causal_only_for_test", causal_only)
    model = build_tiny_model("llama", tokenizer)
    model.set_attn_implementation("causal_only_for_test")
    scorer = OptionScorer(model, tokenizer)
    assert not scorer.prefix_tree
    reference = OptionScorer(build_tiny_model("llama", tokenizer), tokenizer, prefix_tree=False)
    single_prompt = [i for i in items if len(i["options"]) == 2][:1]  # no padding: a causal-only model is exact
    torch.testing.assert_close(scorer.logprobs(single_prompt), reference.logprobs(single_prompt))


@pytest.mark.parametrize("bad", [0, -3, "many", 2.5])
def test_bad_tree_tokens_is_one_line(tokenizer, bad):
    with pytest.raises(DsoError, match="tree_tokens"):
        OptionScorer(build_tiny_model("llama", tokenizer), tokenizer, tree_tokens=bad)


@pytest.mark.parametrize("family", ["llava", "qwen2_5_vl", "gemma3", "mllama"])
def test_text_items_on_vision_language_models_use_trees(family, items):
    from tests.vlm_fixtures import build_tiny_vlm

    model, processor = build_tiny_vlm(family)
    tree = OptionScorer(model, processor.tokenizer, processor=processor, tree_attention_chunk=7)
    rows = OptionScorer(model, processor.tokenizer, processor=processor, prefix_tree=False)
    assert tree.prefix_tree, f"{family}: the tree path fell back"
    assert tree.attention_chunk == 7, f"{family}: chunked tree attention was turned off"
    torch.testing.assert_close(tree.logprobs(items), rows.logprobs(items), atol=1e-5, rtol=1e-5)
    assert tree.stats.tokens < rows.stats.tokens
