"""scripts/bench_training.py runs end to end on a tiny model and reports what its JSON promises."""

import pytest

from tests.cli_runner import load_script


@pytest.fixture(scope="module")
def bench():
    return load_script("bench_training")


def test_bench_training_times_both_step_implementations_on_the_same_batches(bench, tiny_llama_dir, capsys):
    report = bench.main([
        "--steps", "2", "--warmup", "1", "model=hf", f"model.name_or_path={tiny_llama_dir}", "model.device=cpu",
        "bias.n_train=64", "bias.n_train_unambiguous=32", "bias.test_pairs_per_occupation=1",
        "optimizer.occupations_per_batch=2", "optimizer.unambiguous_per_batch=4", "scoring.batch_size=32",
    ])  # fmt: skip
    assert report["train_flop_fraction"] > 0 and report["speedup_vs_previous"] > 0
    details = report["details"]
    assert details["max_param_diff"] < 1e-5, "the same gradients, up to float rounding"
    for name in ("previous", "ours"):
        phases = details[name]["phases"]
        assert {"base", "ambiguous_forward", "policy_loss_backward", "text_forward", "kl_text_backward"} <= set(phases)
        assert details[name]["step_seconds"] >= sum(phases.values()) * 0.5
    # ours runs the base model once per KL sequence and the text KL without padding or repeated prefixes
    assert details["ours"]["flops"]["no_grad"] < details["previous"]["flops"]["no_grad"]
    assert details["ours"]["flops"]["with_grad"] < details["previous"]["flops"]["with_grad"]
    assert '"speedup_vs_previous"' in capsys.readouterr().out.strip().splitlines()[-1]
