"""The DSO trainer on a tiny random model: it learns, it is seeded, and the path term runs."""

import pytest
import torch

from dso_cli.benchmarks.occupation import build
from dso_cli.metrics import decision_metrics
from dso_cli.models.layouts import find_norm_modules
from dso_cli.rl.rewards import StereotypeFlipReward
from dso_cli.rl.trainer import BatchSampler, TrainConfig, train_dso
from dso_cli.scoring import OptionScorer, policy
from dso_cli.steering.affine import apply_affine, init_affine_params
from tests.conftest import build_tiny_model


@pytest.fixture(scope="module")
def train_items():
    splits = build(n_train=256, n_train_unambiguous=16, heldout_occupations=[])
    keep = {"nurse", "carpenter", "secretary", "mechanic"}
    return [i for i in splits["train"].to_list() if i["occupation"] in keep or not i["ambiguous"]]


def run(tokenizer, items, **overrides):
    model = build_tiny_model("llama", tokenizer, seed=3)
    scorer = OptionScorer(model, tokenizer, batch_size=32)
    params = init_affine_params(find_norm_modules(model))
    cfg = TrainConfig(**{"steps": 12, "lr": 0.05, "occupations_per_batch": 4, "pairs_per_occupation": 2, **overrides})
    rows = []
    train_dso(scorer, params, items, StereotypeFlipReward(), cfg, log=rows.append)
    return scorer, params, rows


def pob(scorer, params, items, omega):
    with apply_affine(scorer.model, params, omega):
        return decision_metrics(items, policy(scorer.logprobs(items)), bootstrap_reps=2)["pob"]


def test_training_reduces_bias_on_the_training_items(tokenizer, train_items):
    scorer, params, rows = run(tokenizer, train_items, omega="fixed")
    amb = [i for i in train_items if i["ambiguous"]]
    assert len(rows) == 12 and {"reward", "batch_pob", "kl", "grad_norm"} <= set(rows[0])
    assert pob(scorer, params, amb, 1.0) < 0.5 * pob(scorer, params, amb, 0.0)
    assert any(p.abs().sum() > 0 for p in params.values())


def test_seeded_runs_are_identical(tokenizer, train_items):
    _, a, _ = run(tokenizer, train_items, steps=3)
    _, b, _ = run(tokenizer, train_items, steps=3)
    for key in a:
        assert torch.equal(a[key], b[key])


def test_path_term_alone_moves_the_parameters(tokenizer, train_items):
    """With a zero reward and no KL, only the path term can produce a gradient."""
    zero = lambda items, probs: torch.zeros_like(probs)  # noqa: E731
    for omega, moves in (("fixed", False), ("path", True)):
        model = build_tiny_model("llama", tokenizer, seed=3)
        params = init_affine_params(find_norm_modules(model))
        rows = []
        cfg = TrainConfig(steps=3, lr=0.05, omega=omega, kl_coef=0.0, path_weight=10.0, l1=0.0)
        train_dso(OptionScorer(model, tokenizer, batch_size=32), params, train_items, zero, cfg, log=rows.append)
        assert any(p.abs().sum() > 0 for p in params.values()) == moves
        assert ("path_loss" in rows[0]) == moves


def test_batches_are_stratified_counterbalanced_pairs(train_items):
    import random

    sampler = BatchSampler(train_items, TrainConfig(occupations_per_batch=3, pairs_per_occupation=2), random.Random(0))
    batch = sampler.ambiguous_batch()
    assert len(batch) == 12 and len({i["occupation"] for i in batch}) == 3
    by_pair = {}
    for i in batch:
        by_pair.setdefault(i["pair_id"], []).append(i["pro_option"])
    assert all(sorted(v) == [0, 1] for v in by_pair.values())
    assert all(not i["ambiguous"] for i in sampler.unambiguous_batch())


def test_bad_trainer_settings():
    from dso_cli.errors import DsoError

    with pytest.raises(DsoError, match="omega"):
        TrainConfig(omega="sometimes")
    with pytest.raises(DsoError, match="steps"):
        TrainConfig(steps=0)
