"""The DSO trainer on a tiny random model: it learns, it is seeded, and the path term runs."""

import itertools
import math

import pytest
import torch

from dso_cli.benchmarks.occupation import build
from dso_cli.benchmarks.pronoun_probes import ASSOCIATION, CONTROL, association_probes
from dso_cli.errors import DsoError
from dso_cli.evaluation import decision_metrics
from dso_cli.metrics import kl_divergence
from dso_cli.models.layouts import find_norm_modules
from dso_cli.rl.batches import BatchSampler, member_labels
from dso_cli.rl.config import TrainConfig
from dso_cli.rl.rewards import StereotypeFlipReward, cluster_pob, per_occupation_gap
from dso_cli.rl.step import per_member_pob
from dso_cli.rl.trainer import train_dso
from dso_cli.scoring import OptionScorer, policy
from dso_cli.steering.affine import apply_affine, init_affine_params
from tests.conftest import build_tiny_model


@pytest.fixture(scope="module")
def train_items():
    # one person style, answer format (the person's word) and question type: a random model's preferences
    # then differ by occupation (averaged over many wordings and formats, its chance biases would wash out)
    splits = build(
        n_train=4000,
        n_train_unambiguous=16,
        heldout_occupations=[],
        heldout_template_pairs_per_occupation=4,
        formats=["word", "name"],
        format_twins=1,
    )
    keep = {"nurse", "carpenter", "secretary", "mechanic"}
    words = [i for i in splits["train"].to_list() if "/words/" in i["id"] and i["question_type"] == "occupation"]
    return [i for i in splits["train"].to_list() if not i["ambiguous"]] + [i for i in words if i["cluster"] in keep]


def run(tokenizer, items, train_options=None, **overrides):
    model = build_tiny_model("llama", tokenizer, seed=3)
    scorer = OptionScorer(model, tokenizer, batch_size=32)
    params = init_affine_params(find_norm_modules(model))
    cfg = TrainConfig(**{"steps": 12, "lr": 0.05, "occupations_per_batch": 4, "pairs_per_occupation": 2, **overrides})
    rows = []
    options = train_options or {}
    train_dso(apply_affine, scorer, params, items, StereotypeFlipReward(), cfg, log=rows.append, **options)
    return scorer, params, rows


def pob(scorer, params, items, strength):
    with apply_affine(scorer.model, params, strength):
        return decision_metrics(items, policy(scorer.logprobs(items)), bootstrap_reps=2)["pob"]


def test_training_reduces_bias_on_the_training_items(tokenizer, train_items):
    scorer, params, rows = run(tokenizer, train_items, strength_mode="fixed", steps=20)
    amb = [i for i in train_items if i["ambiguous"]]
    assert len(rows) == 20 and {"reward", "batch_pob", "kl_text", "grad_norm"} <= set(rows[0])  # the shipped objective
    assert pob(scorer, params, amb, 1.0) < 0.5 * pob(scorer, params, amb, 0.0)
    assert any(p.abs().sum() > 0 for p in params.values())


def test_cached_base_text_targets_give_the_gradients_of_a_base_forward_every_step(tokenizer, train_items):
    from dso_cli.rl.phases import PhaseTimer

    passages = [f"The {w} walked to the market and bought bread, milk and {n} apples." for w, n in
                (("farmer", 3), ("teacher", 5), ("child", 2))]  # fmt: skip
    timer = PhaseTimer()
    options = {"text_passages": passages, "timer": timer}
    _, cached, rows = run(tokenizer, train_items, options, steps=4, kl_prompt_items=2, kl_text_passages=2)
    _, every, again = run(tokenizer, train_items, {**options, "fast_step": False}, steps=4,
                          kl_prompt_items=2, kl_text_passages=2)  # fmt: skip
    for key in cached:
        assert torch.allclose(cached[key], every[key], rtol=1e-4, atol=1e-6), key
    assert [r["kl_text"] for r in rows] == pytest.approx([r["kl_text"] for r in again], rel=1e-4, abs=1e-7)
    assert {"base", "ambiguous_forward", "policy_loss_backward", "text_forward", "kl_text_backward"} <= set(
        timer.seconds
    )


def test_the_base_cache_keeps_each_sequences_hidden_states(tokenizer):
    from dso_cli.rl.batches import BaseCache

    scorer = OptionScorer(build_tiny_model("llama", tokenizer, seed=3), tokenizer, batch_size=32)
    seqs = [list(range(5, 17)), list(range(40, 47)), list(range(9, 30))]
    base = BaseCache(scorer)
    with torch.no_grad():
        hidden, _lengths = scorer.token_hidden(seqs)
    first = base.text_hidden(seqs)
    scorer.token_hidden = lambda seqs: pytest.fail("the cache ran a forward pass again")  # type: ignore[method-assign]
    again = base.text_hidden([seqs[2], seqs[0]])
    for row, seq in enumerate(seqs):
        assert torch.allclose(first[row], hidden[row, : len(seq)], atol=1e-5)
    assert torch.equal(again[0], first[2]) and torch.equal(again[1], first[0])


def test_the_text_kl_over_prefix_trees_equals_the_padded_one(tokenizer):
    from dso_cli.rl.batches import BaseCache
    from dso_cli.rl.text_kl import packed_text_kl, padded_text_kl

    model = build_tiny_model("llama", tokenizer, seed=3)
    scorer = OptionScorer(model, tokenizer, batch_size=32, tree_tokens=40)  # several trees
    params = init_affine_params(find_norm_modules(model))
    with torch.no_grad():
        for p in params.values():
            p.copy_(torch.randn_like(p) * 0.2)
    shared = list(range(5, 15))
    seqs = [[*shared, 20, 21, 22], [*shared, 20, 23], [*shared, 30, 31, 32, 33, 34], list(range(40, 47)), [7, 8]]
    base = BaseCache(scorer).text_hidden(seqs)
    values, grads = [], []
    for loss in (packed_text_kl, padded_text_kl):
        for p in params.values():
            p.grad = None
        with apply_affine(model, params, 1.0):
            value = loss(scorer, seqs, base)
            value.backward()
        values.append(value.detach())
        grads.append({k: p.grad.clone() for k, p in params.items()})
    assert values[0] > 0 and torch.allclose(values[0], values[1], rtol=1e-5, atol=1e-7)
    for key in params:
        torch.testing.assert_close(grads[0][key], grads[1][key], rtol=1e-4, atol=1e-6)


def test_seeded_runs_are_identical(tokenizer, train_items):
    _, a, _ = run(tokenizer, train_items, steps=3)
    _, b, _ = run(tokenizer, train_items, steps=3)
    for key in a:
        assert torch.equal(a[key], b[key])


def test_path_term_alone_moves_the_parameters(tokenizer, train_items):
    """With a zero reward, no accuracy reward, no association term and no KL, only the path term can produce a
    gradient."""
    zero = lambda items, probs: torch.zeros_like(probs)  # noqa: E731
    for mode, moves in (("fixed", False), ("path", True)):
        model = build_tiny_model("llama", tokenizer, seed=3)
        params = init_affine_params(find_norm_modules(model))
        rows = []
        cfg = TrainConfig(steps=3, lr=0.05, strength_mode=mode, kl_coef=0.0, path_weight=10.0, l1=0.0,
                          accuracy_weight=0.0, association_weight=0.0, kl_prompt_items=0,
                          kl_text_passages=0)  # fmt: skip
        train_dso(
            apply_affine, OptionScorer(model, tokenizer, batch_size=32), params, train_items, zero, cfg, log=rows.append
        )
        assert any(p.abs().sum() > 0 for p in params.values()) == moves
        assert ("path_loss" in rows[0]) == moves


def test_association_term_flattens_the_training_occupations_pronouns_and_keeps_the_controls(tokenizer, train_items):
    """With a zero reward and no accuracy term, the association term alone moves the transform: the
    training occupations' pronouns go towards 50/50 (KL(uniform || pi) falls, though this random model
    is near-certain on half the probes) while the name-determined controls stay near the base model;
    off (weight 0), nothing moves."""
    zero = lambda items, probs: torch.zeros_like(probs)  # noqa: E731
    probes = association_probes(train_items)
    assoc = [p for p in probes if p["question_type"] == ASSOCIATION]
    controls = [p for p in probes if p["question_type"] == CONTROL]

    def from_uniform(logprobs):
        return (-torch.log_softmax(logprobs, -1).mean(-1) - math.log(2)).mean()

    for weight in (0.0, 10.0):
        model = build_tiny_model("llama", tokenizer, seed=3)
        scorer = OptionScorer(model, tokenizer, batch_size=32)
        params = init_affine_params(find_norm_modules(model))
        rows = []
        cfg = TrainConfig(steps=10, lr=0.2, association_weight=weight, association_probes=8, accuracy_weight=0.0,
                          kl_prompt_items=0, kl_text_passages=0)  # fmt: skip
        train_dso(apply_affine, scorer, params, train_items, zero, cfg, log=rows.append)
        assert ("association_gap" in rows[0]) == (weight > 0)
        if not weight:
            assert all(p.abs().sum() == 0 for p in params.values())
            continue
        with apply_affine(model, params, 0.0):
            before, base_controls = from_uniform(scorer.logprobs(assoc)), scorer.logprobs(controls)
        with apply_affine(model, params, 1.0):
            after, steered_controls = from_uniform(scorer.logprobs(assoc)), scorer.logprobs(controls)
        assert after < 0.8 * before
        assert kl_divergence(steered_controls, base_controls).mean() < 0.5 * (before - after)


def test_batches_are_stratified_counterbalanced_pairs(train_items):
    import random

    sampler = BatchSampler(train_items, TrainConfig(occupations_per_batch=3, pairs_per_occupation=2), random.Random(0))
    batch = sampler.ambiguous_batch()
    occupations = {i["cluster"] for i in batch}
    pairs = {o: {i["pair_id"] for i in train_items if i["ambiguous"] and i["cluster"] == o} for o in occupations}
    available = {o: len(ids) for o, ids in pairs.items()}
    assert len(occupations) == 3 and len(batch) == sum(2 * min(2, n) for n in available.values())
    by_pair = {}
    for i in batch:
        by_pair.setdefault(i["pair_id"], []).append(i["pro_option"])
    assert all(sorted(v) == [0, 1] for v in by_pair.values())
    assert all(not i["ambiguous"] for i in sampler.unambiguous_batch())


def test_a_scenario_asked_in_several_formats_comes_whole():
    import random

    from dso_cli.benchmarks.occupation import build

    items = build(n_train=48, n_train_unambiguous=8, format_twins=2, test_pairs_per_occupation=1)["train"].to_list()
    sampler = BatchSampler(items, TrainConfig(occupations_per_batch=4, pairs_per_occupation=1), random.Random(0))
    batch = sampler.ambiguous_batch()
    scenarios = {i["scenario_id"] for i in batch}
    assert len(batch) == 4 * len(scenarios) and len({i["answer_format"] for i in batch}) > 1
    for scenario in scenarios:
        whole = [i["id"] for i in items if i["scenario_id"] == scenario]
        assert sorted(i["id"] for i in batch if i["scenario_id"] == scenario) == sorted(whole)


def test_unambiguous_batches_are_counterbalanced(train_items):
    """Every unambiguous batch: whole pairs (the correct person first in one twin, second in the other),
    as many stating the stereotyped person as the counter-stereotyped one."""
    import random

    sampler = BatchSampler(train_items, TrainConfig(unambiguous_per_batch=8), random.Random(0))
    for _ in range(5):
        batch = sampler.unambiguous_batch()
        assert len(batch) == 8 and not any(i["ambiguous"] for i in batch)
        assert sum(i["correct"] == i["pro_option"] for i in batch) == 4
        places = [i["option_groups"].index(i["option_groups"][i["correct"]]) for i in batch]
        assert sorted(places) == [0] * 4 + [1] * 4
        assert all(len([j for j in batch if j["pair_id"] == i["pair_id"]]) == 2 for i in batch)


def test_learning_rate_schedules_decay_from_lr_towards_zero():
    from dso_cli.rl.step import scheduled_lr

    steps = 10
    for schedule in ("cosine", "linear"):
        cfg = TrainConfig(steps=steps, lr=0.002, lr_schedule=schedule)
        rates = [scheduled_lr(cfg, step) for step in range(1, steps + 1)]
        assert rates[0] == 0.002 and all(a > b > 0 for a, b in itertools.pairwise(rates))
    assert scheduled_lr(TrainConfig(steps=steps, lr=0.002, lr_schedule="constant"), steps) == 0.002
    with pytest.raises(DsoError, match="lr_schedule"):
        TrainConfig(lr_schedule="step")


def test_bad_trainer_settings():
    with pytest.raises(DsoError, match="strength_mode"):
        TrainConfig(strength_mode="sometimes")
    with pytest.raises(DsoError, match="steps"):
        TrainConfig(steps=0)


def fresh(tokenizer):
    model = build_tiny_model("llama", tokenizer, seed=3)
    return OptionScorer(model, tokenizer, batch_size=32), init_affine_params(find_norm_modules(model))


BASE = {"lr": 0.05, "occupations_per_batch": 2, "pairs_per_occupation": 1, "unambiguous_per_batch": 4}


@pytest.mark.parametrize("estimator", ["reinforce", "rloo", "ppo"])
def test_every_estimator_trains_through_the_loop(tokenizer, train_items, estimator):
    scorer, params = fresh(tokenizer)
    rows = []
    cfg = TrainConfig(steps=2, estimator=estimator, samples=3, ppo_epochs=2, **BASE)
    train_dso(apply_affine, scorer, params, train_items, StereotypeFlipReward(), cfg, log=rows.append)
    assert len(rows) == 2 and all(torch.isfinite(p).all() for p in params.values())
    assert any(p.abs().sum() > 0 for p in params.values())


def test_kl_constraint_is_met_by_dual_ascent(tokenizer, train_items):
    """A large step size pushes KL far above the budget with a fixed small penalty; the constraint's
    multiplier grows until the KL on the anchor items is back within the budget."""
    # the accuracy term also moves the unambiguous items the KL is measured on: at weight 1 the budget is
    # reachable; at the default's weight the two constraints trade off
    settings = {
        **BASE,
        "steps": 80,
        "lr": 1.0,
        "unambiguous_per_batch": 16,
        "kl_budget": 0.002,
        "kl_coef": 0.0,
        "accuracy_weight": 1.0,
        "association_weight": 0.0,  # another force on the anchor items that no budget governs
        "lr_schedule": "constant",
    }  # the earlier defaults
    unamb = [i for i in train_items if not i["ambiguous"]]
    kls = {}
    for mode in ("penalty", "constraint"):
        scorer, params = fresh(tokenizer)
        rows = []
        cfg = TrainConfig(kl_mode=mode, kl_dual_lr=20.0, **settings)
        train_dso(apply_affine, scorer, params, train_items, StereotypeFlipReward(), cfg, log=rows.append)
        with torch.no_grad():
            base = scorer.logprobs(unamb)
            with apply_affine(scorer.model, params, 1.0):
                steered = scorer.logprobs(unamb)
        kls[mode] = float(kl_divergence(steered, base).mean())
        if mode == "constraint":
            assert max(r["dual_kl"] for r in rows) > 0.5  # the multiplier had to grow (from kl_coef = 0)
    assert kls["penalty"] > 2 * 0.002  # unconstrained, the transform drifts far from the base model
    assert kls["constraint"] <= 0.002 * 1.5  # within tolerance of the budget


def test_accuracy_constraint_learns_its_weight_by_dual_ascent(tokenizer, train_items):
    """With a target above what the batches reach, the accuracy weight grows from its start; with one
    they already exceed, it falls to 0 (the objective then spends nothing on accuracy)."""
    duals = {}
    for target in (1.0, 0.01):
        scorer, params = fresh(tokenizer)
        rows = []
        cfg = TrainConfig(**{**BASE, "steps": 4}, accuracy_weight=1.0, accuracy_target=target, accuracy_dual_lr=5.0)
        train_dso(apply_affine, scorer, params, train_items, StereotypeFlipReward(), cfg, log=rows.append)
        duals[target] = [r["dual_accuracy"] for r in rows]
    assert duals[1.0][-1] > duals[1.0][0] > 1.0
    assert duals[0.01][-1] == 0.0
    with pytest.raises(DsoError, match="accuracy_target"):
        TrainConfig(accuracy_target=1.5)


def test_interrupt_and_resume_equal_an_uninterrupted_run(tokenizer, train_items, tmp_path):
    import os
    import signal

    cfg = TrainConfig(steps=6, checkpoint_every=4, lr_schedule="cosine", **BASE)  # the schedule resumes too
    scorer, straight = fresh(tokenizer)
    train_dso(apply_affine, scorer, straight, train_items, StereotypeFlipReward(), cfg)

    def interrupt_at_3(row):
        if row["step"] == 3:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C mid-run: the step finishes, a checkpoint is saved

    scorer, params = fresh(tokenizer)
    path = tmp_path / "checkpoint.pt"
    with pytest.raises(KeyboardInterrupt):
        train_dso(
            apply_affine,
            scorer,
            params,
            train_items,
            StereotypeFlipReward(),
            cfg,
            log=interrupt_at_3,
            checkpoint_path=path,
        )
    assert torch.load(path, weights_only=False)["step"] == 3
    scorer, resumed = fresh(tokenizer)  # a new process: fresh model and parameters
    rows = []
    train_dso(apply_affine, scorer, resumed, train_items, StereotypeFlipReward(), cfg, log=rows.append,
              checkpoint_path=path, resume=True)  # fmt: skip
    assert [r["step"] for r in rows] == [4, 5, 6]
    for key in straight:
        assert torch.equal(resumed[key], straight[key]), key


def test_nan_stops_training_and_keeps_the_last_good_checkpoint(tokenizer, train_items, tmp_path):
    from dso_cli.rl.step import NonFiniteLoss

    calls = {"n": 0}

    def poisoned(items, probs):
        calls["n"] += 1
        reward = StereotypeFlipReward()(items, probs)
        return reward * float("nan") if calls["n"] == 5 else reward

    scorer, params = fresh(tokenizer)
    path = tmp_path / "checkpoint.pt"
    cfg = TrainConfig(steps=8, checkpoint_every=2, **BASE)
    with pytest.raises(NonFiniteLoss, match="non-finite policy_loss at step 5"):
        train_dso(apply_affine, scorer, params, train_items, poisoned, cfg, checkpoint_path=path)
    saved = torch.load(path, weights_only=False)
    assert saved["step"] == 4 and all(torch.isfinite(v).all() for v in saved["params"].values())
    assert all(torch.isfinite(p).all() for p in params.values())  # the step with NaN was not applied


def test_early_stopping_keeps_the_val_best_parameters(tokenizer, train_items):
    val = [i for i in train_items if i["ambiguous"]][:16]
    scorer, params = fresh(tokenizer)
    rows = []
    cfg = TrainConfig(steps=12, eval_every=2, patience=2, **{**BASE, "lr": 0.3})
    metrics = train_dso(
        apply_affine, scorer, params, train_items, StereotypeFlipReward(), cfg, log=rows.append, val_items=val
    )
    evals = {r["step"]: r["val_pob"] for r in rows if "val_pob" in r}
    assert metrics["best_step"] == min(evals, key=evals.get) and metrics["best_val_pob"] == min(evals.values())
    with torch.no_grad(), apply_affine(scorer.model, params, 1.0):
        pob_now = per_occupation_gap(val, policy(scorer.logprobs(val))).abs().mean()
    assert float(pob_now) == pytest.approx(metrics["best_val_pob"], abs=1e-6)


def test_gradient_accumulation_runs_micro_batches(tokenizer, train_items):
    scorer, params = fresh(tokenizer)
    rows = []
    cfg = TrainConfig(steps=2, accumulate=3, **BASE)
    train_dso(apply_affine, scorer, params, train_items, StereotypeFlipReward(), cfg, log=rows.append)
    assert len(rows) == 2 and rows[0]["kl_text"] > -1e-6 and all(torch.isfinite(p).all() for p in params.values())


def test_bfloat16_training_learns_what_float32_learns(tokenizer, train_items):
    """Hub models run in bfloat16 on CUDA: the same seeded run in bf16 must learn the same transform
    (the hooks compute in float32, so small trained values are not rounded away)."""
    amb = [i for i in train_items if i["ambiguous"]]
    learnt = {}
    for dtype in (torch.float32, torch.bfloat16):
        model = build_tiny_model("llama", tokenizer, seed=3).to(dtype)
        scorer = OptionScorer(model, tokenizer, batch_size=32)
        params = init_affine_params(find_norm_modules(model))
        cfg = TrainConfig(steps=20, lr=0.05, occupations_per_batch=4, pairs_per_occupation=2, strength_mode="fixed")
        train_dso(apply_affine, scorer, params, train_items, StereotypeFlipReward(), cfg)
        base, steered = pob(scorer, params, amb, 0.0), pob(scorer, params, amb, 1.0)
        learnt[dtype] = (torch.cat([p.detach().flatten() for p in params.values()]), steered / base)
    (p32, ratio32), (p16, ratio16) = learnt[torch.float32], learnt[torch.bfloat16]
    assert all(p.dtype == torch.float32 for p in (p32, p16))  # parameters stay float32 leaves
    assert ratio32 < 0.5 and ratio16 < 0.5
    assert abs(ratio16 - ratio32) < 0.15, (ratio32, ratio16)
    assert torch.nn.functional.cosine_similarity(p32, p16, dim=0) > 0.8


def test_a_mixture_logs_each_members_batch_pob_named_by_what_differs():
    def items(benchmark, attribute, n=4):
        return [
            {"benchmark": benchmark, "attribute": attribute, "id": f"{benchmark}-{attribute}-{i}"} for i in range(n)
        ]

    assert member_labels(items("occupation", "gender")) == {}
    assert set(member_labels(items("occupation", "gender") + items("synthbias", "gender")).values()) == {
        "occupation", "synthbias"
    }  # fmt: skip
    assert set(member_labels(items("occupation", "gender") + items("occupation", "race")).values()) == {
        "gender",
        "race",
    }
    both = member_labels(items("occupation", "gender") + items("bbq", "race"))
    assert both == {("bbq", "race"): "bbq_race", ("occupation", "gender"): "occupation_gender"}

    ambiguous = [it for it in build(attribute="race", n_train=64, n_train_unambiguous=32)["train"] if it["ambiguous"]]
    gender = [dict(it, attribute="gender") for it in ambiguous[:8]]
    race = ambiguous[8:16]
    batch = gender + race
    probs = torch.rand(len(batch), 2, generator=torch.Generator().manual_seed(0))
    probs = probs / probs.sum(1, keepdim=True)
    members = member_labels(batch)
    got = per_member_pob(batch, probs, members)
    assert got == {"gender": pytest.approx(float(cluster_pob(gender, probs[:8]))),
                   "race": pytest.approx(float(cluster_pob(race, probs[8:])))}  # fmt: skip
    assert per_member_pob(race, probs[8:], members).keys() == {"race"}  # a member missing from the batch
    assert per_member_pob(batch, probs, {}) == {}


def test_association_divergences_are_zero_at_fifty_fifty_and_the_kl_keeps_its_gradient_when_certain():
    from dso_cli.rl.association import association_loss

    class Fixed:  # a scorer whose association probes have P(she) = p and whose controls match the base
        def __init__(self, p):
            self.z = torch.tensor(math.log(p / (1 - p)), requires_grad=True)

        def logprobs(self, items, grad=False):
            if items == ["control"]:
                return torch.tensor([[0.0, -2.0]])
            return torch.stack([torch.zeros(()), self.z])[None, :]

    base = torch.tensor([[0.0, -2.0]])
    for divergence in ("kl", "square"):
        gap, control_kl = association_loss(Fixed(0.5), ["probe"], ["control"], base, divergence)
        assert float(gap.detach()) == pytest.approx(0.0, abs=1e-7) and float(control_kl) == pytest.approx(0.0, abs=1e-7)
    certain = {}
    for divergence in ("kl", "square"):
        scorer = Fixed(0.99)
        gap, _ = association_loss(scorer, ["probe"], ["control"], base, divergence)
        gap.backward()
        certain[divergence] = float(scorer.z.grad)
    assert certain["kl"] == pytest.approx(0.99 - 0.5, rel=1e-4)  # d KL(u || pi) / d log-odds = P(she) - 1/2
    assert certain["square"] == pytest.approx(2 * 0.49 * 0.99 * 0.01, rel=1e-4)  # vanishes with P(1 - P)
    gap, _ = association_loss(Fixed(0.8), ["probe"], ["control"], base, "square")
    assert float(gap.detach()) == pytest.approx(0.09, rel=1e-5)
