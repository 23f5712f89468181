"""scripts/bench_peers.py: our CAA vector and steering-vectors' agree on a tiny model, timings reported."""

import importlib.util
import math

import pytest
import torch

from tests.cli_runner import ROOT

pytest.importorskip("steering_vectors", reason="steering-vectors is not installed (make setup installs it)")


def load_script():
    spec = importlib.util.spec_from_file_location("bench_peers", ROOT / "scripts/bench_peers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def one_thread():
    """A tiny model runs fastest on one thread, and steadily when other jobs share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


TINY = ["bias.n_train=64", "bias.n_train_unambiguous=8", "bias.test_pairs_per_occupation=1",
        "bias.val_pairs_per_occupation=1", "scoring.batch_size=7", "model.device=cpu"]  # fmt: skip


def test_caa_vectors_agree_with_steering_vectors(tiny_llama_dir):
    bench = load_script()
    overrides = ["model=hf", f"model.name_or_path={tiny_llama_dir}", *TINY, "scoring.cpu_linear=onednn"]
    cfg = bench.compose_config("train", overrides)
    # no --layer: the layer our default fit selects on val (of the two candidates of a 2-layer model)
    result = bench.measure(cfg, warmup_items=4, log=lambda _: None)
    assert result["layer_source"] == "selected on val" and result["layer"] in result["candidate_layers"] == [0, 1]
    assert result["n_pairs"] == 38 and result["batch_size"] == 7 and result["n_token_mismatches"] == 0
    assert result["ours_norm"] > 0 and result["steering_vectors_norm"] > 0
    assert result["cosine"] >= 0.99 and result["relative_norm_difference"] < 1e-3
    assert result["steering_vectors_guess_matches"]
    for key in ("ours_seconds", "steering_vectors_seconds", "ours_candidate_pass_seconds", "ours_selection_seconds"):
        assert math.isfinite(result[key]) and result[key] > 0
    # the library also ran on our kernel, and the ratio is against its faster run
    by_kernel = result["steering_vectors_seconds_by_kernel"]
    assert result["ours_linear_kernel"] == "onednn" and set(by_kernel) == {"stock", "onednn"}
    assert result["steering_vectors_seconds"] == min(by_kernel.values())


def test_pairs_put_anti_first_and_read_the_last_token(tiny_llama_dir):
    bench = load_script()
    cfg = bench.compose_config("train", ["model=hf", f"model.name_or_path={tiny_llama_dir}", *TINY])
    loaded, scorer = bench.load_scored_model(bench.ModelSetup.from_config(cfg))
    items = bench.usable_items(bench.split_items(bench.build_benchmark(cfg.bias_benchmark, cfg.model), "train"))[:3]
    for (positive, negative), item in zip(bench.contrast_pairs(scorer, items), items, strict=True):
        prompt = scorer.render(item)
        assert positive == prompt + item["options"][item["anti_option"]]
        assert negative == prompt + item["options"][item["pro_option"]]
    # a fixed layer, and the sign: ours = mean anti - mean pro = the library's mean positive - negative
    tokenizer = bench.library_tokenizer(loaded.tokenizer)
    ours, _ = bench.fit_ours(loaded, scorer, items, 1, 2)
    theirs, _ = bench.fit_steering_vectors(loaded, scorer, items, 1, 2, tokenizer)
    assert bench.compare_vectors(ours, theirs)["cosine"] >= 0.99 and float(ours.norm()) > 0
