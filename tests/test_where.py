"""Where the signal lives (probes on cached activations) and where a method steers (artifact placement)."""

import hashlib

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from dso_cli.commands.extract import label_columns, resolve_modules
from dso_cli.report.where import (
    _layer_and_kind,
    affine_mass,
    chance,
    iti_heads,
    mass_fraction,
    probe_accuracy,
    signal_by_layer,
)
from dso_cli.report.where_plots import affine_heatmap, head_heatmap
from dso_cli.scoring import OptionScorer
from dso_cli.steering.activation_cache import ActivationCache
from dso_cli.steering.activations import collect, usable_items
from tests.conftest import tiny_config

PLANTED = 2


def parity(ids) -> int:
    """A pseudo-random bit of a token sequence: no linear read-out of the tokens recovers it."""
    return hashlib.sha256(str(list(ids)).encode()).digest()[0] & 1


def plant(model, layer: int, strength: float = 8.0):
    """Add ±strength·u to decoder layer ``layer``'s output at every position (sign: the parity of the
    tokens up to there) and take it off again before the next layer: the signal exists only there."""
    layers = model.model.layers
    direction = torch.nn.functional.normalize(
        torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(5)), dim=0
    )
    state = {}

    def remember_ids(module, args, kwargs):
        ids = kwargs.get("input_ids") if kwargs.get("input_ids") is not None else args[0]
        signs = torch.tensor([[2.0 * parity(row[: t + 1].tolist()) - 1 for t in range(len(row))] for row in ids])
        state["shift"] = strength * signs[..., None] * direction

    def add(module, args, output):
        return (
            output + state["shift"] if isinstance(output, torch.Tensor) else (output[0] + state["shift"], *output[1:])
        )

    def remove(module, args, kwargs):
        if args:
            return (args[0] - state["shift"], *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": kwargs["hidden_states"] - state["shift"]}

    return [
        model.model.register_forward_pre_hook(remember_ids, with_kwargs=True),
        layers[layer].register_forward_hook(add),
        layers[layer + 1].register_forward_pre_hook(remove, with_kwargs=True),
    ]


def test_probe_finds_a_planted_signal_at_its_layer_and_chance_elsewhere(tokenizer):
    from dso_cli.benchmarks.occupation import build

    config = tiny_config("llama", len(tokenizer))
    config.num_hidden_layers = 5
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval().requires_grad_(False)
    items = usable_items(build(n_train=200, n_train_unambiguous=0)["train"].to_list())
    scorer = OptionScorer(model, tokenizer, prefix_tree=False)  # rows: the planting hook sees whole prefixes
    keys = resolve_modules(model, ["residual"])
    handles = plant(model, PLANTED)
    try:
        recorded = collect(scorer, items, keys, 16)
    finally:
        for handle in handles:
            handle.remove()
    completions = [(scorer.encode(it), it[f"{kind}_option"]) for kind in ("pro", "anti") for it in items]
    labels = np.array([parity(list(enc.prompt_ids) + list(enc.option_ids[option])) for enc, option in completions])
    groups = np.array(label_columns(items)["group"] * 2)
    assert 0.4 < labels.mean() < 0.6
    accuracy = []
    for key in keys:
        features = torch.cat([recorded.values["pro"][key], recorded.values["anti"][key]]).double().numpy()
        accuracy.append(probe_accuracy(features, labels, groups))
    assert accuracy[PLANTED] > 0.95, accuracy
    assert all(acc < 0.65 for layer, acc in enumerate(accuracy) if layer != PLANTED), accuracy


def test_signal_by_layer_reads_a_dso_extract_entry(tokenizer, tmp_path):
    from dso_cli.benchmarks.occupation import build
    from tests.conftest import build_tiny_model

    model = build_tiny_model("llama", tokenizer)
    items = usable_items(build(n_train=40, n_train_unambiguous=0, formats=["word"])["train"].to_list())
    scorer = OptionScorer(model, tokenizer)
    keys = resolve_modules(model, ["residual"])
    cache = ActivationCache(tmp_path)
    extra = {"labels": label_columns(items), "module_sets": {"residual": [n for _, n in keys]}}

    def record(span):
        return collect(scorer, items[span.start : span.stop], keys, 8)

    entry = cache.write(cache.request(scorer, items), keys, len(items), record, extra=extra)
    frame = signal_by_layer(entry, folds=4)
    assert frame["layer"].tolist() == [0, 1] and frame["module"].tolist() == [n for _, n in keys]
    assert frame["stereotype_chance"].eq(0.5).all() and frame["caa_norm"].gt(0).all()
    assert frame[["group_probe", "stereotype_probe"]].apply(lambda c: c.between(0, 1)).all().all()
    # the options (man, woman) differ by gender token by token, so the group probe reads them off
    assert frame["group_probe"].max() > 0.9


def test_affine_mass_and_the_ninety_percent_fraction(tmp_path):
    zeros = torch.zeros(4)
    tensors = {
        "model.layers.0.input_layernorm.a": torch.tensor([3.0, 0, 0, 0]),
        "model.layers.0.input_layernorm.b": zeros,
        "model.layers.1.post_attention_layernorm.a": torch.tensor([0.0, -1, 0, 0]),
        "model.layers.1.post_attention_layernorm.b": zeros,
        "model.norm.a": zeros,
        "model.norm.b": zeros,
    }
    modules, neurons = affine_mass(tensors)
    assert neurons.numel() == 12
    by_module = dict(zip(modules["module"], modules["mass"], strict=True))
    assert by_module == {"model.layers.0.input_layernorm": 3.0, "model.layers.1.post_attention_layernorm": 1.0,
                         "model.norm": 0.0}  # fmt: skip
    assert mass_fraction(neurons, 0.9) == pytest.approx(2 / 12)  # 3 + 1 reach 3.6; 3 alone does not
    assert mass_fraction(neurons, 0.75) == pytest.approx(1 / 12)
    assert mass_fraction(torch.zeros(5)) == 0.0
    assert _layer_and_kind("model.language_model.layers.12.post_feedforward_layernorm") == (
        12,
        "post_feedforward_layernorm",
    )
    assert _layer_and_kind("model.norm") == (None, "norm")
    assert affine_heatmap(modules, tmp_path / "heat.png", "t").stat().st_size > 0


def test_iti_heads_from_the_manifest(tmp_path):
    chosen = [
        {"module": "model.layers.1.self_attn.o_proj", "head": 3, "probe_accuracy": 0.8},
        {"module": "model.layers.0.self_attn.o_proj", "head": 0, "probe_accuracy": 0.7},
    ]
    manifest = {"hyperparameters": {"heads": chosen}}
    heads = iti_heads(manifest)
    assert heads.values.tolist() == [[1, 3, 0.8], [0, 0, 0.7]]
    assert head_heatmap(heads, tmp_path / "heads.png", "t").stat().st_size > 0


def test_chance_is_the_majority_rate():
    assert chance(np.array([1, 1, 0, 1])) == 0.75
    assert np.isnan(probe_accuracy(np.zeros((4, 2)), np.array([1, 1, 1, 1]), np.arange(4)))
