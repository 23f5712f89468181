"""A steering method from outside dso_cli trains, sweeps, compares and reports with no change to dso_cli."""

from __future__ import annotations

import json
import textwrap

import pandas as pd
import pytest

from tests.cli_runner import SMALL, dso

PLUGIN = '''
"""A user's own method: the CAA vector of the last decoder layer, scaled by a user option."""
from dso_cli.models.layouts import find_decoder_layers
from dso_cli.steering.caa import apply_additive
from dso_cli.steering.method import SteeringMethod


class LastLayerShift(SteeringMethod):
    name = "last_layer_shift"
    strength = {"semantics": "last layer + alpha * scale * (mean anti - mean pro)", "range": [0.0, 4.0],
                "default_grid": "[0,1,2]"}

    def records(self, model, norm_modules, can_select):
        return [find_decoder_layers(model)[-1]], []

    def fit(self, job):
        layer = find_decoder_layers(job.loaded.model)[-1]
        acts = job.activations().outputs([layer])
        vector = float(self.options.get("scale", 1.0)) * (acts["anti"][layer].mean(0) - acts["pro"][layer].mean(0))
        return self.create_artifact(job, {f"{layer}.v": vector}, {"layer": layer, "scale": self.options.get("scale")})

    @classmethod
    def apply(cls, model, tensors, strength):
        return apply_additive(model, tensors, strength)
'''


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    root = tmp_path_factory.mktemp("user_code")
    (root / "my_steering").mkdir()
    (root / "my_steering" / "__init__.py").write_text(textwrap.dedent(PLUGIN))
    return {"PYTHONPATH": str(root)}


def test_a_method_of_the_users_package_trains_sweeps_compares_and_reports(plugin, tiny_llama_dir, tmp_path):
    model = ["model=hf", f"model.name_or_path={tiny_llama_dir}"]
    trust = ["allow_targets=[my_steering]"]
    run = tmp_path / "train"
    result = dso("train", *model, "steering_method._target_=my_steering.LastLayerShift", "+steering_method.scale=2.0",
                 *trust, f"run_dir={run}", "train.eval_val=false", *SMALL, **plugin)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((run / "artifact/manifest.json").read_text())
    assert manifest["method"] == "last_layer_shift" and manifest["hyperparameters"]["scale"] == 2.0

    # without trusting the package again, a later verb refuses to import it (a run directory is data)
    refused = dso("sweep", f"run_dir={run}", "alpha=[0,1]", **plugin)
    assert refused.returncode == 2 and "allow_targets=[my_steering]" in refused.stderr
    result = dso("sweep", f"run_dir={run}", "alpha=[0,1]", *trust, "sweep.bootstrap_reps=10", **plugin)
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = pd.read_csv(run / "sweep.csv")
    test = sweep[sweep["split"] == "test"].sort_values("alpha")
    assert test["alpha"].tolist() == [0.0, 1.0] and test["kl"].iloc[1] > 0

    result = dso("report", f"run_dir={run}", *trust, **plugin)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (run / "report" / "pareto.png").stat().st_size > 0

    compared = tmp_path / "compare"
    result = dso("compare", *model, f"run_dir={compared}", "compare.methods=[none,last_layer_shift]",
                 "compare.options.last_layer_shift._target_=my_steering.LastLayerShift",
                 "compare.options.last_layer_shift.scale=0.5", "compare.grids.last_layer_shift=[0,1]",
                 "compare.bootstrap_reps=10", "compare.hypervolume_bootstrap_reps=0", *trust, *SMALL,
                 **plugin)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    data = pd.read_csv(compared / "compare.csv")
    assert set(data["method"]) == {"none", "last_layer_shift"}
    summary = pd.read_csv(compared / "report/summary.csv")
    assert summary["method"].tolist() == ["none", "last_layer_shift"]
    shifted = json.loads((compared / "last_layer_shift/artifact/manifest.json").read_text())
    assert shifted["hyperparameters"]["scale"] == 0.5
