"""The association baselines: projection removes the occupation-gender direction of pronoun contexts,
LEACE fitted on the association leaves no linear trace of it; both are exact no-ops at strength 0."""

import pytest
import torch

from dso_cli.benchmarks.occupation import build
from dso_cli.errors import DsoError
from dso_cli.models.layouts import find_decoder_layers
from dso_cli.scoring import OptionScorer
from dso_cli.steering.activations import recording
from dso_cli.steering.association import LEACEAssociation, Projection, association_activations
from dso_cli.steering.method import FitJob, method_class
from tests.conftest import build_tiny_model
from tests.test_baselines import Loaded


@pytest.fixture(scope="module")
def fitted(tokenizer):
    model = build_tiny_model("llama", tokenizer)
    scorer = OptionScorer(model, tokenizer, chat_template=False, batch_size=8)
    splits = build(n_train=40, n_train_unambiguous=8, test_pairs_per_occupation=1, val_pairs_per_occupation=1)
    job = FitJob(Loaded(model), scorer, splits["train"].to_list())
    return job, splits


def test_projection_removes_the_direction_and_is_exact_at_zero(fitted):
    job, splits = fitted
    artifact = Projection(layers=[1]).fit(job)
    layer = find_decoder_layers(job.loaded.model)[1]
    u = artifact.tensors[f"{layer}.u"]
    assert u.norm() == pytest.approx(1.0, abs=1e-5)
    acts, z = association_activations(job.scorer, job.train_items, [layer])
    mean_gap = acts[layer][z == 1].mean(0) - acts[layer][z == 0].mean(0)
    assert torch.nn.functional.cosine_similarity(mean_gap, u, dim=0) == pytest.approx(1.0, abs=1e-5)
    items = splits["test"].to_list()[:6]
    base = job.scorer.logprobs(items)
    with artifact.steer(job.scorer, 0.0):
        assert torch.equal(job.scorer.logprobs(items), base)
    with artifact.steer(job.scorer, 1.0), recording(job.loaded.model, [layer]) as seen:
        steered = job.scorer.logprobs(items)
        along = seen[("output", layer)].float() @ u
    assert along.abs().max() < 1e-3 and not torch.allclose(steered, base)  # nothing left along u


def test_leace_on_the_association_leaves_equal_class_means(fitted):
    job, _ = fitted
    artifact = LEACEAssociation(layers=[0]).fit(job)
    assert artifact.method == "leace_association" and method_class("leace_association") is LEACEAssociation
    layer = find_decoder_layers(job.loaded.model)[0]
    acts, z = association_activations(job.scorer, job.train_items, [layer])
    from dso_cli.steering.leace import erase

    parts = [artifact.tensors[f"{layer}.{p}"] for p in ("proj_left", "proj_right", "bias")]
    erased = erase(acts[layer], *parts)
    torch.testing.assert_close(erased[z == 1].mean(0), erased[z == 0].mean(0), atol=1e-3, rtol=0)


def test_association_methods_need_the_occupation_benchmark(fitted):
    job, _ = fitted
    other = FitJob(job.loaded, job.scorer, [dict(i, benchmark="mine") for i in job.train_items])
    with pytest.raises(DsoError, match="training occupations"):
        Projection().fit(other)
