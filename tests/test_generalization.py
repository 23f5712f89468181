"""What protects and measures generalisation: disjoint text corpora, held-out capability cost,
mixtures of benchmarks, stratified mixture batches and the KL-aware early stopping."""

from __future__ import annotations

import math
import random
from collections import Counter

import numpy as np
import pytest
import torch

from dso_cli.benchmarks import mixture, neutral_text
from dso_cli.benchmarks.occupation import load_occupations
from dso_cli.errors import DsoError
from dso_cli.evaluation import Evaluator, default_metrics, evaluate_sequences, perplexity, prompt_sequences
from dso_cli.rl.batches import BatchSampler
from dso_cli.rl.config import TrainConfig
from dso_cli.rl.trainer import _early_stop_update
from dso_cli.scoring import OptionScorer
from tests.conftest import build_tiny_model
from tests.test_evaluation import random_artifact


def write_synthbias_like(path, rows_per_occupation: int = 12) -> str:
    """A SynthBias-format CSV of our own sentences over the 40 BLS occupations (type1 and type2)."""
    occupations = [o.name for o in load_occupations()]
    rng = random.Random(0)
    lines = ["type,sample,occ_1,occ_2,pronoun,is_stereotypical"]
    for occ in occupations:
        for day in range(rows_per_occupation // 2):  # the day keeps two sentences apart when `other` repeats
            other = rng.choice([o for o in occupations if o != occ])
            for pronoun in ("he", "she"):  # every sentence with both genders, as in SynthBias
                lines.append(
                    f"type1,On day {day} the {occ} met the {other} before {pronoun} left.,{occ},{other},{pronoun},"
                    "ambiguous"
                )
                lines.append(
                    f"type2,On day {day} the {occ} thanked the {other} because {pronoun} had finished.,{occ},{other},"
                    f"{pronoun},unambiguous"
                )
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_training_and_heldout_text_are_disjoint_by_construction():
    train = neutral_text.read_passages(None, "train")
    val = neutral_text.read_passages(None, "val")
    heldout = neutral_text.build(max_passages=None).passages
    assert len(train) + len(val) == 293 and len(val) == 29 and len(heldout) == 50  # repeated articles once
    assert neutral_text.overlap(train, heldout) == 0 and neutral_text.overlap(train, val) == 0
    assert neutral_text.overlap(val, heldout) == 0
    with pytest.raises(DsoError, match="part must be one of"):
        neutral_text.read_passages(None, "test")


def test_perplexity_and_its_delta_method_se():
    nll, counts = np.array([10.0, 12.0, 30.0]), np.array([5, 6, 10])
    ppl, se = perplexity(nll, counts)
    assert ppl == pytest.approx(math.exp(52 / 21))
    # the delta method against a brute-force bootstrap over sequences
    rng = np.random.default_rng(0)
    draws = [perplexity(nll[i], counts[i])[0] for i in rng.integers(0, 3, size=(20000, 3))]
    assert se == pytest.approx(np.std(draws), rel=0.35)
    assert math.isnan(perplexity(nll[:1], counts[:1])[1])


@pytest.fixture
def scorer(tokenizer):
    return OptionScorer(build_tiny_model("llama", tokenizer), tokenizer)


def test_text_cost_is_zero_at_zero_strength_and_grows(scorer):
    from dso_cli.benchmarks.occupation import build

    items = build(n_train=64, n_train_unambiguous=32, test_pairs_per_occupation=1)["test"].to_list()
    corpus = neutral_text.TextCorpus("t", neutral_text.build(max_passages=4).passages, max_tokens=24)
    prompts = prompt_sequences(scorer, items, 6)
    assert len(prompts) == 6 and all(len(p) > 10 for p in prompts)
    evaluator = Evaluator(scorer, default_metrics(), bootstrap_reps=2, prompt_items=6)
    artifact = random_artifact(scorer.model)
    text = evaluator.text_scores(artifact, corpus, [0.0, 1.0])
    base, steered = evaluator.evaluate(artifact, items, [0.0, 1.0], text=text)
    assert base["text_kl"] == 0.0 and base["prompt_kl"] == 0.0
    assert steered["text_kl"] > 0 and steered["prompt_kl"] > 0 and steered["text_kl_se"] > 0
    assert steered["text_ppl"] != pytest.approx(base["text_ppl"]) and base["text_ppl_se"] > 0
    (none,) = Evaluator(scorer, default_metrics(), bootstrap_reps=2).evaluate(None, items, [0.0])
    assert math.isnan(none["text_kl"]) and math.isnan(none["prompt_kl"])  # nothing measured: NaN, not 0


def test_prompt_kl_excludes_the_decision_position(scorer):
    """The KL over a prompt's tokens never sees the next-token distribution of the answer itself."""
    seq = [list(range(3, 15))]
    artifact = random_artifact(scorer.model)
    whole = evaluate_sequences(scorer, artifact, seq, [1.0])[0]
    assert whole["n_tokens"] == 11  # 12 tokens predict 11 next tokens


def test_mixture_keeps_members_splits_and_prefixes_clusters(tmp_path):
    csv = write_synthbias_like(tmp_path / "sb.csv")
    built = mixture.build(["occupation", "synthbias"], path=csv, n_train=40, n_train_unambiguous=20,
                          test_pairs_per_occupation=1, val_pairs_per_occupation=1, seed=None)  # fmt: skip
    assert set(built) == {"train", "val", "test", "heldout_occupations", "heldout_templates"}
    test = built["test"].to_list()
    assert {it["benchmark"] for it in test} == {"occupation", "synthbias"}
    assert all(it["cluster"].startswith(f"{it['benchmark']}:") for it in test)
    assert {it["benchmark"] for it in built["heldout_templates"]} == {"occupation"}
    per_member = Counter(it["benchmark"] for it in built["train"] if it["ambiguous"])
    assert per_member == {"occupation": 40, "synthbias": 40}  # n_train reached both members
    from dso_cli.benchmarks.synthbias import build as synthbias_build

    alone = synthbias_build(path=csv, n_train=40, n_train_unambiguous=20, test_pairs_per_occupation=1,
                            val_pairs_per_occupation=1)  # fmt: skip
    assert [it["id"] for it in test if it["benchmark"] == "synthbias"] == alone["test"]["id"]


def test_mixture_bad_members_are_one_line_errors():
    with pytest.raises(DsoError, match=r"unknown bias benchmark 'nope' in bias\.benchmarks"):
        mixture.build(["occupation", "nope"])
    with pytest.raises(DsoError, match="cannot contain a mixture"):
        mixture.build(["mixture"])
    with pytest.raises(DsoError, match="twice"):
        mixture.build(["occupation", "occupation"])


def test_mixture_batches_alternate_benchmarks_and_restore(tmp_path):
    csv = write_synthbias_like(tmp_path / "sb.csv")
    items = mixture.build(["occupation", "synthbias"], path=csv, n_train=80, n_train_unambiguous=20,
                          test_pairs_per_occupation=1, val_pairs_per_occupation=1)["train"].to_list()  # fmt: skip
    cfg = TrainConfig(occupations_per_batch=4, pairs_per_occupation=1)
    sampler = BatchSampler(items, cfg, random.Random(0))
    assert sampler.benchmarks == ["occupation", "synthbias"]
    batch = sampler.ambiguous_batch()
    assert Counter(it["benchmark"] for it in batch) == {
        "occupation": 8,
        "synthbias": 8,
    }  # occupation: a scenario in two formats
    state = sampler.state()
    twin = BatchSampler(items, cfg, random.Random(0))
    twin.rng.setstate(sampler.rng.getstate())
    twin.restore(state)
    assert [it["id"] for it in twin.ambiguous_batch()] == [it["id"] for it in sampler.ambiguous_batch()]


def test_early_stopping_keeps_the_lowest_pob_within_the_kl_budget():
    params = {"m.a": torch.zeros(2)}
    state = {"best": {"pob": math.inf, "step": 0, "params": None}, "bad_evals": 0}
    evaluations = [(0.30, 0.20), (0.20, 0.04), (0.10, 0.09), (0.15, 0.03)]  # (val POB, val-text KL)
    for step, (pob, kl) in enumerate(evaluations, start=1):
        params["m.a"].fill_(step)
        _early_stop_update(state, {"val_pob": pob, "val_text_kl": kl}, 0.05, step, params, patience=9)
    assert state["best"]["step"] == 4 and state["best"]["params"]["m.a"][0] == 4  # not step 3: over budget
    over = {"best": {"pob": math.inf, "step": 0, "params": None}, "bad_evals": 0}
    for step, (pob, kl) in enumerate([(0.3, 0.2), (0.1, 0.5), (0.2, 0.1)], start=1):
        _early_stop_update(over, {"val_pob": pob, "val_text_kl": kl}, 0.05, step, params, patience=9)
    assert over["best"]["step"] == 3  # nothing within budget: the gentlest
