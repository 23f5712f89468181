"""Pruning an affine artifact: the global top-k rule, its edge cases, and that pruned steering is exact."""

import pytest
import torch

from dso_cli.commands.prune import parse_keep
from dso_cli.errors import DsoError
from dso_cli.models.layouts import find_norm_modules
from dso_cli.steering.affine import init_affine_params
from dso_cli.steering.artifact import Artifact
from dso_cli.steering.prune import neuron_weights, prune_affine
from tests.conftest import build_tiny_model

MODEL_INFO = {"name_or_path": "tiny", "fingerprint": "f"}


def artifact_for(modules: dict[str, int], seed: int = 0, method: str = "dso") -> Artifact:
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, size in modules.items():
        tensors[f"{name}.a"] = torch.randn(size, generator=generator) * 0.1
        tensors[f"{name}.b"] = torch.randn(size, generator=generator) * 0.1
    return Artifact.create(method, tensors, model=MODEL_INFO, hyperparameters={}, strength={"trained_at": 1.0})


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("keep", [0.05, 0.3, 0.6, 0.95])
def test_prune_keeps_exactly_the_global_top_fraction(seed, keep):
    modules = {"m0": 7, "m1": 13, "m2": 5}
    artifact = artifact_for(modules, seed)
    pruned, stats = prune_affine(artifact, keep)
    n = sum(modules.values())
    assert stats.n_neurons == n and stats.n_kept == round(keep * n)
    before, after = neuron_weights(artifact.tensors), neuron_weights(pruned.tensors)
    kept = torch.cat([after[m] > 0 for m in modules])
    weights = torch.cat([before[m] for m in modules])
    assert int(kept.sum()) == stats.n_kept
    assert weights[kept].min() >= weights[~kept].max()  # one global threshold, across modules
    for key, value in pruned.tensors.items():  # kept neurons are untouched, the rest exactly zero
        original = artifact.tensors[key]
        nonzero = value != 0
        assert torch.equal(value[nonzero], original[nonzero])
    assert stats.mass_kept == pytest.approx(float(weights[kept].sum() / weights.sum()))
    assert stats.modules_touched == sum(bool((after[m] > 0).any()) for m in modules)
    assert pruned.manifest["pruned"]["n_kept"] == stats.n_kept
    assert artifact.tensors["m0.a"].count_nonzero() == 7  # the input artifact is not modified


def test_prune_edges_and_monotone_mass():
    artifact = artifact_for({"m0": 10, "m1": 10}, seed=3)
    full, stats = prune_affine(artifact, 1.0)
    assert all(torch.equal(full.tensors[k], artifact.tensors[k]) for k in artifact.tensors)
    assert stats.mass_kept == pytest.approx(1.0)
    empty, stats = prune_affine(artifact, 0.0)
    assert all(not t.any() for t in empty.tensors.values()) and stats.modules_touched == 0
    masses = [prune_affine(artifact, k)[1].mass_kept for k in (0.1, 0.2, 0.5, 0.8, 1.0)]
    assert masses == sorted(masses) and masses[0] >= 0.1  # the strongest tenth carries at least a tenth


def test_ties_are_broken_deterministically():
    tensors = {"m.a": torch.ones(6), "m.b": torch.zeros(6)}
    artifact = Artifact("dso", tensors, {"strength": {}})
    pruned, stats = prune_affine(artifact, 0.5)
    assert pruned.tensors["m.a"].tolist() == [1, 1, 1, 0, 0, 0] and stats.n_kept == 3


def test_pruned_steering_matches_zeroed_parameters_and_is_exact_at_omega_zero(tokenizer):
    model = build_tiny_model("llama", tokenizer)
    params = init_affine_params(find_norm_modules(model))
    torch.manual_seed(0)
    with torch.no_grad():
        for p in params.values():
            p.normal_(0, 0.3)
    artifact = Artifact.create("dso", params, model=MODEL_INFO, hyperparameters={}, strength={})
    pruned, _ = prune_affine(artifact, 0.4)
    ids = torch.tensor([[5, 17, 42, 99, 7, 3]])
    with torch.no_grad():
        base = model(ids).logits
        with pruned.apply(model, 0.0):
            assert torch.equal(model(ids).logits, base)
        with pruned.apply(model, 1.0):
            steered = model(ids).logits
        with artifact.apply(model, 1.0):
            unpruned = model(ids).logits
        with prune_affine(artifact, 1.0)[0].apply(model, 1.0):
            assert torch.equal(model(ids).logits, unpruned)
    assert not torch.allclose(steered, base) and not torch.allclose(steered, unpruned)


def test_prune_refuses_non_affine_artifacts_and_bad_fractions():
    artifact = artifact_for({"m": 4}, method="caa")
    with pytest.raises(DsoError, match="affine"):
        prune_affine(artifact, 0.5)
    with pytest.raises(DsoError, match="in \\[0, 1\\]"):
        prune_affine(artifact_for({"m": 4}), 1.5)
    assert parse_keep("0.2:1:0.4") == [0.2, 0.6, 1.0] and parse_keep(0.6) == [0.6]
    for bad in ("0", "1.5", "[0.5,2]", "x"):
        with pytest.raises(DsoError, match="keep="):
            parse_keep(bad)
