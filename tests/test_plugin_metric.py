"""A metric from outside dso_cli becomes a result column (sweep, eval, the library API) with no change to
dso_cli; bad metric paths are one-line errors. The CLI runs in process (its entry function)."""

from __future__ import annotations

import math
import textwrap

import pandas as pd
import pytest

from dso_cli.cli import main
from dso_cli.errors import DsoError
from dso_cli.evaluation import Metric, Scores, load_metrics
from dso_cli.targets import trust
from tests.cli_runner import SMALL

METRICS = '''
import dso_cli


class FirstMass(dso_cli.Metric):
    """Mean probability of the first-listed option over the ambiguous items."""
    name = "first_mass"

    def compute(self, scores):
        amb = [i for i, item in enumerate(scores.items) if item["ambiguous"]]
        return {"first_mass": float(scores.probs[amb, 0].mean())}


class Counted(dso_cli.Metric):
    """Two columns of its own: the ambiguous items it saw, and the strength it was given."""
    name = "counted"
    columns = ("counted_ambiguous", "counted_strength")

    def compute(self, scores):
        return {"counted_ambiguous": sum(bool(i["ambiguous"]) for i in scores.items),
                "counted_strength": scores.strength}


class Undeclared(dso_cli.Metric):
    name = "undeclared"

    def compute(self, scores):
        return {"something_else": 1.0}


class NotAMetric:
    pass
'''


@pytest.fixture(scope="module")
def user_metrics(tmp_path_factory):
    root = tmp_path_factory.mktemp("user_metrics")
    (root / "my_metrics").mkdir()
    (root / "my_metrics" / "__init__.py").write_text(textwrap.dedent(METRICS))
    return root


@pytest.fixture
def on_path(user_metrics, monkeypatch):
    monkeypatch.syspath_prepend(str(user_metrics))
    yield
    trust([])  # the CLI's allow_targets is process-wide: leave no trust behind


def run(*args: str) -> int:
    """The CLI's exit status, in process."""
    try:
        return main(list(args))
    except SystemExit as exc:
        return int(exc.code or 0)


@pytest.fixture(scope="module")
def mean_match_run(tiny_llama_dir, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("metric_run")
    model = ("model=hf", f"model.name_or_path={tiny_llama_dir}")
    assert run("train", *model, "steering_method=mean_match", f"run_dir={run_dir}", "train.eval_val=false", *SMALL) == 0
    return run_dir


SWEEP = ("alpha=[0,1]", "sweep.splits=[test]", "heldout_text.max_passages=2", "sweep.bootstrap_reps=10")


def test_a_users_metric_becomes_a_sweep_column(mean_match_run, on_path):
    metrics = "sweep.extra_metrics=[my_metrics.FirstMass,my_metrics.Counted]"
    assert run("sweep", f"run_dir={mean_match_run}", *SWEEP, metrics, "allow_targets=[my_metrics]") == 0
    sweep = pd.read_csv(mean_match_run / "sweep.csv")
    builtin = list(sweep.columns).index("n_unambiguous")
    assert list(sweep.columns)[builtin + 1 :] == ["first_mass", "counted_ambiguous", "counted_strength"]
    assert sweep["first_mass"].between(0, 1).all()
    assert (sweep["counted_ambiguous"] == sweep["n_ambiguous"]).all()
    assert sweep["counted_strength"].tolist() == sweep["alpha"].tolist() == [0.0, 1.0]


def test_an_untrusted_or_broken_metric_is_refused_in_one_line(mean_match_run, on_path, capsys):
    def refused(metric: str, *extra: str, scored: bool = False) -> str:
        """The error line; before the model loads (nothing else printed) unless the metric had to run."""
        assert run("sweep", f"run_dir={mean_match_run}", *SWEEP, f"sweep.extra_metrics=[{metric}]", *extra) == 2
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.strip()]
        assert "Traceback" not in err and lines[-1].startswith("dso sweep: error: "), lines[-3:]
        assert scored or len(lines) == 1, lines
        return lines[-1]

    assert "allow_targets=[my_metrics]" in refused("my_metrics.FirstMass")
    assert "not a subclass of dso_cli.Metric" in refused("my_metrics.NotAMetric", "allow_targets=[my_metrics]")
    assert "cannot import" in refused("my_metrics.Missing", "allow_targets=[my_metrics]")
    # a column the metric does not declare shows only when it runs
    assert "'something_else'" in refused("my_metrics.Undeclared", "allow_targets=[my_metrics]", scored=True)


def test_eval_and_the_library_api_take_the_same_metrics(mean_match_run, tiny_llama_dir, on_path):
    args = ("eval.benchmarks=[occupation]", "eval.capability=[]", "alpha=[0,1]", "eval.bootstrap_reps=10",
            "eval.extra_metrics=[my_metrics.FirstMass]", "allow_targets=[my_metrics]")  # fmt: skip
    assert run("eval", f"run_dir={mean_match_run}", *args) == 0
    evaluated = pd.read_csv(mean_match_run / "eval.csv")
    assert evaluated["first_mass"].between(0, 1).all() and len(evaluated) == 2

    from my_metrics import FirstMass
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import dso_cli

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    items = dso_cli.load_benchmark("occupation", n_train=64, n_train_unambiguous=32, test_pairs_per_occupation=1)
    (row,) = dso_cli.evaluate(None, model, tokenizer, items["test"], [0.0], bootstrap_reps=2, metrics=[FirstMass()])
    assert 0 <= row["first_mass"] <= 1 and not math.isnan(row["pob"])


class TwoColumns(Metric):
    name = "two"
    columns = ("two_a", "two_b")

    def compute(self, scores: Scores) -> dict[str, float]:
        return {"two_a": 1.0}


def test_a_metric_writes_exactly_its_declared_columns(items):
    import torch

    probs = torch.full((len(items), 3), 1 / 3)
    row = TwoColumns()(Scores(items, probs))
    assert list(row) == ["two_a", "two_b"] and row["two_a"] == 1.0 and math.isnan(row["two_b"])


def test_metric_paths_are_checked_before_anything_runs():
    with pytest.raises(DsoError, match="outside dso_cli"):
        load_metrics(["os.path.join"], "sweep.extra_metrics")
    with pytest.raises(DsoError, match="not a dotted path"):
        load_metrics(["dso_cli"], "sweep.extra_metrics")
    with pytest.raises(DsoError, match="not a subclass"):
        load_metrics(["dso_cli.evaluation.Scores"], "sweep.extra_metrics")
    (builtin,) = load_metrics(["dso_cli.evaluation.decisions.ItemBias"], "sweep.extra_metrics")
    assert builtin.output_columns() == ("item_bias", "item_bias_se")
