"""scripts/bench_estimators.py runs end to end on a tiny model and reports ratios to exact."""

import json
import math
import subprocess
import sys

from tests.cli_runner import ROOT, SMALL


def test_bench_estimators_reports_ratios_to_exact(tiny_llama_dir, tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts/bench_estimators.py"), "--estimators", "exact,rloo,ppo",
         "--eval-every", "1", "--target-ratio", "2", "--json", str(out), "model=hf",
         f"model.name_or_path={tiny_llama_dir}", *SMALL, "optimizer.ppo_epochs=2"],
        capture_output=True, text=True, cwd=tmp_path, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    summary = {row["estimator"]: row for row in report["summary"]}
    assert list(summary) == ["exact", "rloo", "ppo"]
    # target = 2 x base val POB: met at the first evaluation by every estimator
    assert all(row["steps_to_target"] == 1 and row["reached"] == "1/1" for row in summary.values())
    assert summary["exact"]["steps_ratio"] == 1 and summary["exact"]["time_ratio"] == 1
    assert summary["exact"]["best_pob_ratio"] == 1 and summary["exact"]["step_cost_ratio"] == 1
    assert summary["exact"]["mean_pob_ratio"] == 1
    assert all(row["step_cost_ratio"] > 0 for row in summary.values())
    for run in report["runs"]:
        assert [point["step"] for point in run["curve"]] == [1, 2]
        assert all(0 <= point["val_pob"] <= 1 for point in run["curve"]) and math.isfinite(run["seconds_per_step"])
    assert "| estimator | reached |" in result.stdout
