"""Multirun sweeps: jobs through Hydra's launchers, the shipped cluster configs, and requeued jobs resuming."""

import json
import shutil

import pytest
import torch
from omegaconf import OmegaConf

from dso_cli.steering.artifact import Artifact
from tests.cli_runner import SMALL, assert_bad_input, dso


def test_two_job_multirun_with_the_basic_launcher_and_requeued_jobs_resume(tiny_llama_dir, tmp_path):
    sweep = tmp_path / "sweep"
    command = [
        "train", "-m", "model=hf", f"model.name_or_path={tiny_llama_dir}", "seed=0,1", f"hydra.sweep.dir={sweep}",
        "run_dir=${hydra:sweep.dir}/${hydra:job.num}", "resume=auto", "optimizer.checkpoint_every=1",
        "train.eval_val=false", *SMALL,
    ]  # fmt: skip
    result = dso(*command)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = [sweep / "0", sweep / "1"]
    artifacts = [Artifact.load(run / "artifact") for run in runs]
    seeds = [OmegaConf.load(run / "config.yaml").seed for run in runs]
    assert seeds == [0, 1]
    assert any(not torch.equal(artifacts[0].tensors[k], artifacts[1].tensors[k]) for k in artifacts[0].tensors)

    # a requeued job reruns the same command line: finished jobs do nothing, an interrupted one resumes
    shutil.rmtree(runs[1] / "artifact")  # as if job 1 was stopped after its last checkpoint
    result = dso(*command)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "already finished training" in result.stdout
    resumed = Artifact.load(runs[1] / "artifact")
    assert all(torch.equal(resumed.tensors[k], artifacts[1].tensors[k]) for k in resumed.tensors)
    assert json.loads((runs[0] / "artifact/manifest.json").read_text())["method"] == "dso"

    # a job that fails at run time (no trained run in its run_dir) does not stop the others; exit 2
    result = dso("sweep", "-m", f"run_dir={tmp_path / 'nope'},{runs[0]}", "alpha=[0,1]", "heldout_text.max_passages=2",
                 f"hydra.sweep.dir={tmp_path / 'sweeps'}")  # fmt: skip
    assert result.returncode == 2, result.stderr[-3000:]
    assert "error in job 0" in result.stderr and "1 job(s) failed: [0]" in result.stderr
    assert (runs[0] / "sweep.csv").is_file()


def test_every_job_of_a_multirun_is_validated_before_the_first_starts(tiny_llama_dir, tmp_path):
    sweep = tmp_path / "sweep"
    result = dso("train", "-m", "model=hf", f"model.name_or_path={tiny_llama_dir}", "seed=0,abc",
                 f"hydra.sweep.dir={sweep}", *SMALL)  # fmt: skip
    assert_bad_input(result, "job 1 (seed=abc): seed: Value 'abc' of type 'str' could not be converted to Integer")
    assert not sweep.exists()  # job 0 was not started either
    result = dso("train", "-m", "optimizer.lr=0.1,-1", f"hydra.sweep.dir={sweep}")
    assert_bad_input(result, "job 1 (optimizer.lr=-1)")


def test_resume_auto_needs_a_run_dir_and_resume_takes_three_values(tmp_path):
    assert_bad_input(dso("train", "resume=auto", "model.device=cpu"), "resume=auto needs a fixed run directory")
    assert_bad_input(dso("train", "resume=maybe", f"run_dir={tmp_path}"), "resume=maybe")


@pytest.mark.parametrize(
    ("launcher", "expected"),
    [
        ("slurm", {"_target_": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher",
                   "gpus_per_node": 1, "max_num_timeout": 3}),
        ("ray_cluster", {"_target_": "hydra_plugins.hydra_ray_launcher.ray_launcher.RayLauncher",
                         "ray": {"init": {"address": "auto"}, "remote": {"num_gpus": 1, "num_cpus": 8}}}),
    ],
)  # fmt: skip
def test_shipped_cluster_launchers_compose_onto_the_plugins(launcher, expected):
    result = dso("train", "--cfg", "hydra", f"hydra/launcher={launcher}", "hydra.launcher.timeout_min=30"
                 if launcher == "slurm" else "hydra.launcher.ray.remote.num_gpus=1")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    got = OmegaConf.to_container(OmegaConf.create(result.stdout).hydra.launcher)
    assert {k: got[k] for k in expected} == expected
