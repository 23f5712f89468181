"""The library API as users call it, on a tiny model built with plain ``transformers`` (not loaded by dso)."""

from __future__ import annotations

import pytest
import torch

import dso_cli
from dso_cli.errors import DsoError
from tests.conftest import build_tiny_model


@pytest.fixture(scope="module")
def benchmark():
    return dso_cli.load_benchmark("occupation", n_train=48, n_train_unambiguous=24, val_pairs_per_occupation=1,
                                  test_pairs_per_occupation=1)  # fmt: skip


@pytest.fixture(scope="module")
def model(tokenizer):
    return build_tiny_model("llama", tokenizer).eval()


def test_load_benchmark_gives_a_dataset_dict_and_refuses_unknown_options(benchmark):
    assert {"train", "val", "test"} <= set(benchmark)
    assert benchmark["train"].num_rows == 48 + 24
    with pytest.raises(DsoError, match="n_trian is not an option of the occupation benchmark"):
        dso_cli.load_benchmark("occupation", n_trian=8)
    with pytest.raises(DsoError, match=r"occupation.n_train: Value 'abc'"):
        dso_cli.load_benchmark("occupation", n_train="abc")


@pytest.mark.parametrize("method", ["none", "prompting", "caa", "iti", "mean_match", "leace"])
def test_fit_save_load_evaluate_every_closed_form_method(method, model, tokenizer, benchmark, tmp_path):
    artifact = dso_cli.fit(method, model, tokenizer, benchmark["train"])
    again = dso_cli.load_artifact(artifact.save(tmp_path / method))
    test = benchmark["test"].select(range(16))
    rows = dso_cli.evaluate(again, model, tokenizer, test, [0.0, 1.0], bootstrap_reps=0)
    assert [r["alpha"] for r in rows] == [0.0, 1.0] and {"pob", "unamb_acc", "kl"} <= set(rows[0])
    base = dso_cli.evaluate(None, model, tokenizer, test, [0.0], bootstrap_reps=0)
    assert rows[0]["pob"] == pytest.approx(base[0]["pob"], abs=1e-6)  # strength 0 is the base model
    if method != "none":
        assert rows[1]["kl"] > 0


def test_fit_dso_trains_with_the_shipped_optimizer_defaults_and_applies_as_a_context_manager(
    model, tokenizer, benchmark
):
    artifact = dso_cli.fit("dso", model, tokenizer, benchmark["train"], steps=2, kl_text_passages=0)
    assert artifact.method == "dso" and artifact.manifest["hyperparameters"]["steps"] == 2
    ids = torch.tensor([[5, 17, 42, 99]])
    with torch.no_grad():
        base = model(ids).logits
        with artifact.apply(model, 0.0):
            assert torch.equal(model(ids).logits, base)
        with artifact.apply(model, 1.0):
            assert not torch.allclose(model(ids).logits, base)
        assert torch.equal(model(ids).logits, base)
    with pytest.raises(DsoError, match="stepz is not an option"):
        dso_cli.fit("dso", model, tokenizer, benchmark["train"], stepz=2)
    with pytest.raises(DsoError, match="top_k is not an option of caa"):
        dso_cli.fit("caa", model, tokenizer, benchmark["train"], top_k=2)
