"""The activation cache: exact round trips, a changed key recomputes, interrupted runs resume, batching
and trees do not change what is recorded, and baseline fits read from it instead of running the model."""

import pytest
import torch

from dso_cli.commands.extract import resolve_modules
from dso_cli.config.group_schemas import CAAOptions
from dso_cli.errors import DsoError
from dso_cli.scoring import OptionScorer
from dso_cli.steering.activation_cache import ActivationCache
from dso_cli.steering.activations import ActivationStore, Recorded, collect, usable_items
from dso_cli.steering.caa import fit_caa
from tests.conftest import build_tiny_model
from tests.test_baselines import Loaded


@pytest.fixture(scope="module")
def train_items():
    from dso_cli.benchmarks.occupation import build

    items = build(n_train=80, n_train_unambiguous=0, test_pairs_per_occupation=1)["train"].to_list()
    return usable_items(items)[:24]  # 24 items whose options name the people


@pytest.fixture(scope="module")
def model(tokenizer):
    return build_tiny_model("llama", tokenizer)


class Counting:
    """``record`` for the cache that counts its calls (runs of the model)."""

    def __init__(self, scorer, items, keys, positions="answer"):
        self.scorer, self.items, self.keys, self.positions, self.calls = scorer, items, keys, positions, 0
        self.returned = []

    def __call__(self, span):
        self.calls += 1
        self.returned.append(collect(self.scorer, self.items[span.start : span.stop], self.keys, 4, self.positions))
        return self.returned[-1]

    def joined(self):
        """What the calls returned, concatenated: what the cache must give back bit for bit."""
        first = self.returned[0]
        values = {kind: {key: torch.cat([r.values[kind][key] for r in self.returned]) for key in first.values[kind]}
                  for kind in first.values}  # fmt: skip
        return Recorded(values, {kind: torch.cat([r.counts[kind] for r in self.returned]) for kind in first.counts})


def assert_same(a, b):
    assert a.values.keys() == b.values.keys()
    for kind in a.values:
        assert torch.equal(a.counts[kind], b.counts[kind])
        for key in a.values[kind]:
            assert torch.equal(a.values[kind][key], b.values[kind][key]), (kind, key)


@pytest.mark.parametrize("positions", ["answer", "last_prompt", "all"])
def test_cache_round_trips_exactly(model, tokenizer, train_items, tmp_path, positions):
    scorer = OptionScorer(model, tokenizer)
    keys = resolve_modules(model, ["norms", "residual", "heads"])
    cache = ActivationCache(tmp_path, shard_items=5)  # several shards, the last one short
    record = Counting(scorer, train_items, keys, positions)
    entry = cache.write(cache.request(scorer, train_items, positions), keys, len(train_items), record)
    assert record.calls == 5 and len(list(entry.path.glob("*.safetensors"))) == 5
    assert_same(entry.load(keys), record.joined())  # storage is exact
    direct = collect(scorer, train_items, keys, 4, positions)  # one pass: other trees, same values
    for kind in direct.values:
        assert torch.equal(direct.counts[kind], entry.load(keys).counts[kind])
        for key in keys:
            torch.testing.assert_close(
                entry.load(keys).values[kind][key], direct.values[kind][key], atol=1e-5, rtol=1e-5
            )
    if positions == "all":  # every token of each completion, prompt included
        lengths = [len(scorer.encode(it).prompt_ids) + len(scorer.encode(it).option_ids[it["pro_option"]])
                   for it in train_items]  # fmt: skip
        assert direct.counts["pro"].tolist() == lengths


def test_same_key_loads_and_a_changed_key_recomputes(tokenizer, model, train_items, tmp_path):
    scorer = OptionScorer(model, tokenizer)
    cache = ActivationCache(tmp_path, shard_items=8)
    norms, heads = resolve_modules(model, ["norms"]), resolve_modules(model, ["heads"])

    def get(scorer, items, keys, cache=cache, positions="answer"):
        record = Counting(scorer, items, keys, positions)
        rows, _, hit = cache.get(cache.request(scorer, items, positions), keys, len(items), record)
        assert hit == (record.calls == 0)
        return rows, hit

    first, hit = get(scorer, train_items, norms)
    assert not hit
    again, hit = get(OptionScorer(model, tokenizer), train_items, norms)  # a new process: same key
    assert hit
    assert_same(again, first)
    assert get(scorer, train_items, norms[:2])[1]  # a subset of the recorded modules is served too
    assert not get(scorer, train_items, heads)[1]  # modules not recorded
    assert not get(scorer, train_items[:-1], norms)[1]  # other items
    assert not get(scorer, train_items, norms, positions="last_prompt")[1]
    other_model = build_tiny_model("llama", tokenizer, seed=1)
    assert not get(OptionScorer(other_model, tokenizer), train_items, norms)[1]
    with scorer.instructed("Treat people of every gender alike."):
        assert not get(scorer, train_items, norms)[1]  # the prompts changed
    half, hit = get(scorer, train_items, norms, cache=ActivationCache(tmp_path, dtype="float16"))
    assert not hit
    for kind in first.values:
        for key in norms:
            torch.testing.assert_close(half.values[kind][key], first.values[kind][key], atol=2e-2, rtol=1e-2)


def test_resuming_with_another_shard_size_records_whole_shards_again(tokenizer, model, train_items, tmp_path):
    scorer = OptionScorer(model, tokenizer)
    keys = resolve_modules(model, ["residual"])
    request = ActivationCache(tmp_path).request(scorer, train_items)

    def dies_after_one_shard(span):
        if span.start > 0:
            raise KeyboardInterrupt
        return collect(scorer, train_items[span.start : span.stop], keys, 4)

    with pytest.raises(KeyboardInterrupt):
        ActivationCache(tmp_path, shard_items=6).write(request, keys, len(train_items), dies_after_one_shard)
    record = Counting(scorer, train_items, keys)
    entry = ActivationCache(tmp_path, shard_items=10).write(request, keys, len(train_items), record)
    assert record.calls == 3  # 0-10, 10-20, 20-24: no shard of the other size is reused
    assert entry.load(keys).counts["pro"].tolist() == [1] * len(train_items)
    manifest = dict(entry.manifest, shards=[dict(entry.manifest["shards"][0], items=[0, 9])])
    with pytest.raises(DsoError, match="holds 10 items"):
        type(entry)(entry.path, manifest).load(keys)


def test_an_interrupted_extraction_resumes_at_the_first_missing_shard(tokenizer, model, train_items, tmp_path):
    scorer = OptionScorer(model, tokenizer)
    keys = resolve_modules(model, ["residual"])
    cache = ActivationCache(tmp_path, shard_items=6)
    request = cache.request(scorer, train_items)
    record = Counting(scorer, train_items, keys)

    def dies_on_the_third_shard(span):
        if span.start >= 12:
            raise KeyboardInterrupt
        return record(span)

    with pytest.raises(KeyboardInterrupt):
        cache.write(request, keys, len(train_items), dies_on_the_third_shard)
    assert cache.find(request, keys) is None  # no manifest: not an entry yet
    record.calls = 0
    entry = cache.write(request, keys, len(train_items), record)
    assert record.calls == 2  # shards 3 and 4 of 4
    loaded = entry.load(keys)
    for kind in loaded.values:
        for key in keys:
            expected = torch.cat(
                [collect(scorer, train_items[s : s + 6], keys, 4).values[kind][key] for s in range(0, 24, 6)]
            )
            assert torch.equal(loaded.values[kind][key], expected)


@pytest.mark.parametrize("positions", ["answer", "last_prompt", "all"])
def test_batch_size_and_prefix_trees_do_not_change_activations(tokenizer, model, train_items, positions):
    keys = resolve_modules(model, ["norms", "residual", "heads"])
    rows = OptionScorer(model, tokenizer, prefix_tree=False)
    trees = OptionScorer(model, tokenizer, tree_tokens=64, tree_attention_chunk=7)
    one = collect(rows, train_items, keys, 1, positions)
    for other in (collect(rows, train_items, keys, 8, positions), collect(trees, train_items, keys, 8, positions)):
        for kind in one.values:
            assert torch.equal(one.counts[kind], other.counts[kind])
            for key in keys:
                torch.testing.assert_close(other.values[kind][key], one.values[kind][key], atol=1e-5, rtol=1e-5)


def test_baseline_fits_read_the_cache_instead_of_running_the_model(tokenizer, model, train_items, tmp_path):
    cache = ActivationCache(tmp_path)
    first = ActivationStore(OptionScorer(model, tokenizer), train_items, cache=cache)
    vector = fit_caa(Loaded(model), first, CAAOptions(layers=[1])).tensors
    assert first.passes == 1 and cache.writes == 1
    scorer = OptionScorer(model, tokenizer)
    second = ActivationStore(scorer, train_items, cache=ActivationCache(tmp_path))
    again = fit_caa(Loaded(model), second, CAAOptions(layers=[1])).tensors
    assert second.passes == 0 and scorer.stats.forward_calls == 0
    assert all(torch.equal(vector[k], again[k]) for k in vector)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"dtype": "int8"}, "extract.dtype"), ({"shard_items": 0}, "extract.shard_items")],
)
def test_bad_cache_settings_are_one_line(tmp_path, kwargs, match):
    with pytest.raises(DsoError, match=match):
        ActivationCache(tmp_path, **kwargs)


def test_unknown_module_is_one_line(model):
    with pytest.raises(DsoError, match="neither norms, residual, heads nor a module"):
        resolve_modules(model, ["residual", "model.layers.9"])
