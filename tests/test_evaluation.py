"""Neutral-text KL and perplexity, and benchmark-specific columns, on a tiny model."""

import math

import pytest
import torch

from dso_cli.benchmarks.neutral_text import TextCorpus
from dso_cli.evaluation import Evaluator, default_metrics, evaluate_text
from dso_cli.evaluation.decisions import ProAntiAccuracy
from dso_cli.models.layouts import find_norm_modules
from dso_cli.scoring import OptionScorer
from dso_cli.steering.affine import init_affine_params
from dso_cli.steering.artifact import Artifact
from tests.conftest import build_tiny_model

PASSAGES = [
    "The council met on Tuesday to discuss the new bridge over the river.",
    "Heavy rain is expected across the north of the state this weekend.",
    "The museum will open a new wing next spring, officials said.",
]


@pytest.fixture
def scorer(tokenizer):
    return OptionScorer(build_tiny_model("llama", tokenizer), tokenizer, chat_template=False)


def random_artifact(model) -> Artifact:
    params = init_affine_params(find_norm_modules(model))
    torch.manual_seed(3)
    with torch.no_grad():
        for p in params.values():
            p.normal_(0, 0.3)
    return Artifact.create("dso", params, model={}, hyperparameters={}, strength={})


def test_text_kl_is_zero_at_zero_strength_and_ppl_matches_the_model(scorer):
    corpus = TextCorpus("t", PASSAGES, max_tokens=16)
    artifact = random_artifact(scorer.model)
    rows = evaluate_text(scorer, artifact, corpus, [0.0, 1.0], batch_size=2)
    assert rows[0]["kl"] == 0.0 and rows[1]["kl"] > 0 and rows[1]["kl_se"] > 0
    # perplexity by hand: one unpadded forward per passage
    nll, count = 0.0, 0
    for text in PASSAGES:
        ids = scorer.tokenizer(text, truncation=True, max_length=16)["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(scorer.model(torch.tensor([ids])).logits[0].float(), -1)
        nll -= float(logp[:-1].gather(1, torch.tensor(ids[1:])[:, None]).sum())
        count += len(ids) - 1
    assert rows[0]["n_tokens"] == count
    assert rows[0]["ppl"] == pytest.approx(math.exp(nll / count), rel=1e-4)
    with artifact.apply(scorer.model, 1.0):  # the steered perplexity differs
        assert evaluate_text(scorer, None, corpus, [0.0], batch_size=3)[0]["ppl"] != pytest.approx(rows[0]["ppl"])


def test_text_metrics_do_not_depend_on_batch_size(scorer):
    corpus = TextCorpus("t", PASSAGES, max_tokens=12)
    artifact = random_artifact(scorer.model)
    one = evaluate_text(scorer, artifact, corpus, [0.5], batch_size=1)[0]
    three = evaluate_text(scorer, artifact, corpus, [0.5], batch_size=3)[0]
    assert one["kl"] == pytest.approx(three["kl"], rel=1e-4, abs=1e-7)
    assert one["ppl"] == pytest.approx(three["ppl"], rel=1e-5)


def test_extra_metrics_are_added_per_strength(scorer):
    from dso_cli.benchmarks.winobias import build

    items = build(test_pairs_per_type=4)["test"].to_list()
    metrics = default_metrics(text=False, extra=[ProAntiAccuracy()])
    rows = Evaluator(scorer, metrics, bootstrap_reps=10).evaluate(None, items, [0.0])
    assert {"acc_pro", "acc_anti", "acc_pro_anti_gap"} <= set(rows[0])
    assert math.isnan(rows[0]["pob"]) and rows[0]["n_unambiguous"] == 16
