"""A multirun folder is one experiment: its runs are found, runs that differ only in their seed are one
curve (mean over seeds, n_seeds, the seed SD beside the bootstrap SE), on made-up sweeps with known values."""

import numpy as np
import pandas as pd
import pytest
import yaml

from dso_cli.errors import DsoError
from dso_cli.pipeline.runs import runs_under
from dso_cli.report.seeds import seed_groups
from dso_cli.report.tables import load_sweeps
from tests.cli_runner import dso

POB = {0: (0.20, 0.10), 1: (0.24, 0.06), 2: (0.22, 0.02)}  # seed -> (POB at ω = 0, at ω = 1)


def make_run(path, seed, lr=0.001, pob=None):
    path.mkdir(parents=True)
    config = {"seed": seed, "run_dir": str(path), "model": {"name": "tiny"}, "bias_benchmark": {"name": "occupation"},
              "optimizer": {"lr": lr, "steps": 2}}  # fmt: skip
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    base, steered = pob or POB[seed]
    rows = [{"method": "dso", "alpha": alpha, "benchmark": "occupation", "attribute": "gender", "split": "test",
             "pob": value, "pob_se": 0.01 * (seed + 1), "item_bias": value * 2, "item_bias_se": 0.02,
             "first_option_rate": 0.5, "order_dep": 0.1, "unamb_acc": 0.6 - alpha * 0.1 * seed, "kl": alpha,
             "text_kl": alpha / 10, "text_ppl": 30.0 + alpha}
            for alpha, value in ((0.0, base), (1.0, steered))]  # fmt: skip
    pd.DataFrame(rows).to_csv(path / "sweep.csv", index=False)
    return path


@pytest.fixture
def multirun(tmp_path):
    root = tmp_path / "M"
    for num, seed in ((0, 0), (1, 1), (10, 2)):  # job 10 sorts after job 1 and job 2
        make_run(root / str(num), seed)
    make_run(root / "2", 0, lr=0.01, pob=(0.20, 0.15))  # another setting: its own curve
    return root


def test_a_multirun_folder_lists_its_runs_in_job_order(multirun, tmp_path):
    assert [p.name for p in runs_under(multirun)] == ["0", "1", "2", "10"]
    assert runs_under(multirun / "1") == [multirun / "1"]  # a run is itself
    (tmp_path / "empty").mkdir()
    with pytest.raises(DsoError, match="neither a run directory nor a folder of runs"):
        runs_under(tmp_path / "empty")
    with pytest.raises(DsoError, match="does not exist"):
        runs_under(tmp_path / "nowhere")


def test_runs_differing_only_in_seed_are_one_curve_with_their_spread(multirun):
    runs = runs_under(multirun)
    assert [[p.name for p in g] for g in seed_groups(runs)] == [["0", "1", "10"], ["2"]]
    data = load_sweeps(runs, "test")
    assert sorted(data["curve"].unique()) == ["dso (0+1+10)", "dso (2)"]
    grouped = data[data["run"] == "0+1+10"].set_index("alpha")
    steered = [POB[s][1] for s in (0, 1, 2)]
    assert grouped.loc[1.0, "pob"] == pytest.approx(np.mean(steered))
    assert grouped.loc[1.0, "pob_seed_sd"] == pytest.approx(np.std(steered, ddof=1))
    assert grouped.loc[1.0, "item_bias_seed_sd"] == pytest.approx(2 * np.std(steered, ddof=1))
    assert grouped.loc[1.0, "pob_se"] == pytest.approx(0.02)  # the mean of the runs' bootstrap SEs
    assert (grouped["n_seeds"] == 3).all() and grouped.loc[0.0, "order_dep_seed_sd"] == 0
    alone = data[data["run"] == "2"].set_index("alpha")
    assert (alone["n_seeds"] == 1).all() and alone["pob_seed_sd"].isna().all()
    assert alone.loc[1.0, "pob"] == 0.15


def test_report_of_a_multirun_folder_writes_one_curve_per_experiment(multirun, tmp_path):
    result = dso("report", f"runs=[{multirun}]", f"report.out_dir={tmp_path / 'report'}")
    assert result.returncode == 0, result.stderr[-2000:]
    points = pd.read_csv(tmp_path / "report" / "pareto.csv")
    grouped = points[points["run"] == "0+1+10"]
    assert len(grouped) == 2 and (grouped["n_seeds"] == 3).all() and grouped["pob_seed_sd"].notna().all()
    text = (tmp_path / "report" / "pareto.md").read_text()
    assert "pob_seed_sd" in text and "n_seeds" in text
    assert (tmp_path / "report" / "pareto.png").stat().st_size > 1000
    # one run alone: no seed columns in the printed table
    single = dso("report", f"runs=[{multirun / '2'}]", f"report.out_dir={tmp_path / 'one'}")
    assert single.returncode == 0, single.stderr[-2000:]
    assert "pob_seed_sd" not in (tmp_path / "one" / "pareto.md").read_text()
