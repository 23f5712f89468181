"""The pronoun association outside the decision format: probes built from the split's own occupations,
and assoc_gap / assoc_r / pronoun_control_acc with asserted values on policies whose association is known."""

import math

import numpy as np
import pytest
import torch

from dso_cli.benchmarks.occupation import build
from dso_cli.benchmarks.occupations import load_occupations
from dso_cli.benchmarks.pronoun_probes import ASSOCIATION, CONTROL, HELDOUT_WORDINGS, WORDINGS, association_probes
from dso_cli.benchmarks.schema import validate_item
from dso_cli.evaluation import Evaluator, default_metrics
from dso_cli.evaluation.association import PronounAssociation
from dso_cli.evaluation.metric import ProbeScores, Scores
from dso_cli.scoring import OptionScorer
from tests.conftest import build_tiny_model

SHARE = {o.name: o.female_share for o in load_occupations()}


@pytest.fixture(scope="module")
def splits():
    return build(n_train=40, n_train_unambiguous=20)


def test_probes_use_the_splits_own_occupations_wordings_and_names(splits):
    test, held_occ, held_tpl = (association_probes(splits[s].to_list()) for s in
                                ("test", "heldout_occupations", "heldout_templates"))  # fmt: skip
    for probes in (test, held_occ, held_tpl):
        for probe in probes:
            validate_item(probe)
    assert {p["cluster"] for p in test} == set(splits["test"]["cluster"])
    assert {p["cluster"] for p in held_occ} == set(splits["heldout_occupations"]["cluster"])
    assert not {p["cluster"] for p in held_occ} & {p["cluster"] for p in test}
    assoc = [p for p in test if p["question_type"] == ASSOCIATION]
    assert len(assoc) == len(set(splits["test"]["cluster"])) * len(WORDINGS)
    assert all(p["answer_prefix"].startswith(f"The {p['cluster']} ") for p in assoc)
    assert sum(p["question_type"] == CONTROL for p in held_tpl) == 2 * len(HELDOUT_WORDINGS) * len(
        set(splits["heldout_templates"]["cluster"])
    )
    held_prefixes = {p["answer_prefix"].split(" ", 2)[-1] for p in held_tpl if p["question_type"] == ASSOCIATION}
    assert held_prefixes.isdisjoint({p["answer_prefix"].split(" ", 2)[-1] for p in assoc})
    for probe in test:
        assert probe["options"] in ([" he", " she"], [" his", " her"]) and probe["option_groups"] == ["male", "female"]
        if probe["question_type"] == CONTROL:  # the name fixes the pronoun
            name = probe["answer_prefix"].split()[0]
            assert probe["answer_prefix"].count(name) == 2 and probe["correct"] in (0, 1)
    assert association_probes([]) == []


def scores_with(probes, p_she):
    probs = torch.tensor([[1 - p, p] for p in p_she])
    return Scores([], torch.zeros(0, 2), probes={"assoc_gap": ProbeScores(probes, probs)}, bootstrap_reps=50)


def test_assoc_columns_on_policies_with_a_known_association(splits):
    probes = association_probes(splits["test"].to_list())
    metric = PronounAssociation()
    stereotyped = [0.8 if SHARE[p["cluster"]] > 0.5 else 0.2 for p in probes]  # follows the majority
    row = metric(scores_with(probes, stereotyped))
    assert row["assoc_gap"] == pytest.approx(0.3) and row["assoc_r"] == pytest.approx(1.0)
    assert row["assoc_gap_se"] == pytest.approx(0.0, abs=1e-6)
    # ... and ignores the name: right for one of each occupation's two controls (a man's, a woman's name)
    assert row["pronoun_control_acc"] == pytest.approx(0.5)
    flat = metric(scores_with(probes, [0.5] * len(probes)))
    assert flat["assoc_gap"] == 0 and math.isnan(flat["assoc_r"])  # no association, nothing to correlate
    always_she = metric(scores_with(probes, [0.9] * len(probes)))
    assert always_she["assoc_gap"] == pytest.approx(0.4) and math.isnan(always_she["assoc_r"])
    reader = [(0.95 if p["correct"] == 1 else 0.05) if p["question_type"] == CONTROL else 0.5 for p in probes]
    row = metric(scores_with(probes, reader))
    assert row["pronoun_control_acc"] == pytest.approx(0.95) and row["assoc_gap"] == 0
    noisy = np.random.default_rng(0).uniform(0.3, 0.7, len(probes))
    row = metric(scores_with(probes, noisy))
    assert abs(row["assoc_r"]) < 0.6 and row["assoc_r_se"] > 0
    assert all(math.isnan(v) for v in metric(scores_with([], [])).values())


def test_every_row_carries_the_association_measured_by_the_model(splits, tokenizer):
    model = build_tiny_model("llama", tokenizer)
    items = splits["heldout_occupations"].to_list()
    evaluator = Evaluator(OptionScorer(model, tokenizer), default_metrics(text=False), bootstrap_reps=20)
    (row,) = evaluator.evaluate(None, items, [0.0])
    assert 0 <= row["assoc_gap"] <= 0.5 and -1 <= row["assoc_r"] <= 1 and 0 < row["pronoun_control_acc"] < 1
    probes = association_probes(items)
    by_hand = torch.softmax(OptionScorer(model, tokenizer).logprobs(probes), -1)[:, 1]
    assoc = [i for i, p in enumerate(probes) if p["question_type"] == ASSOCIATION]
    names = sorted({probes[i]["cluster"] for i in assoc})
    p_she = [float(np.mean([by_hand[i] for i in assoc if probes[i]["cluster"] == n])) for n in names]
    assert row["assoc_gap"] == pytest.approx(float(np.mean(np.abs(np.array(p_she) - 0.5))), abs=1e-5)
