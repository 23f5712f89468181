"""scripts/bench_scoring.py runs end to end on a tiny model and reports what its JSON promises."""

import json
import subprocess
import sys

from tests.cli_runner import ROOT


def test_bench_scoring_reports_ratios_and_agrees_with_the_naive_loop(tiny_llama_dir, tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts/bench_scoring.py"), "--n-baseline", "6", "--max-new-tokens", "6",
         "--repeats", "1", "model=hf", f"model.name_or_path={tiny_llama_dir}", "model.device=cpu",
         "bias.test_pairs_per_occupation=1", "scoring.cpu_linear=onednn"],
        capture_output=True, text=True, cwd=tmp_path, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    numbers = [k for k, v in report.items() if isinstance(v, int | float)]
    # the three ratios are the only top-level numbers that name their baseline
    assert [k for k in numbers if "naive" in k] == ["speedup_vs_naive_loop"]
    assert [k for k in numbers if "generat" in k] == ["speedup_vs_generate_and_parse"]
    assert [k for k in numbers if "flop" in k] == ["flop_fraction_of_matmul"]
    assert all(report[k] > 0 for k in numbers)
    details = report["details"]
    assert details["baseline_items"] == 6 and details["items"] > 6
    assert details["naive_loop"]["max_abs_logprob_difference"] < 1e-4
    assert details["rows_without_prefix_trees"]["max_abs_logprob_difference"] < 1e-4
    assert details["ours"]["tokens_run"] < details["ours"]["prompt_tokens"]  # shared prefixes ran once
    assert 1 <= details["generate_and_parse"]["mean_new_tokens"] <= 6
    assert all(v > 0 for v in details["matmul_flops_per_second"].values())
    assert details["linear_kernel"] == "onednn"
    assert details["ours_on_stock_kernels"]["max_abs_logprob_difference"] < 1e-4
    for baseline in ("naive_loop", "generate_and_parse"):  # top-level ratios: against the faster kernel
        fastest = max(details[baseline]["items_per_second"], details[baseline]["same_kernel"]["items_per_second"])
        key = next(k for k in numbers if baseline.split("_")[0][:6] in k)
        assert abs(report[key] - report["items_per_second"] / fastest) < 1e-9
    assert {"stock_1024", "onednn_1024", "stock_2048", "onednn_2048"} <= set(details["matmul_flops_per_second"])
    assert "| naive loop (stock) |" in result.stdout and "| naive loop (onednn) |" in result.stdout
