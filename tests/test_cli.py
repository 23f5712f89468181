"""The `dso` command end to end on a tiny local model: train -> sweep -> report, help, bad input."""

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from dso_cli.steering.artifact import Artifact
from tests.cli_runner import SMALL, assert_bad_input, dso, dso_process


@pytest.fixture(scope="module")
def trained(tiny_llama_dir, tmp_path_factory):
    """One tiny train run shared by the tests below (train is the slow verb)."""
    outputs = tmp_path_factory.mktemp("outputs")
    result = dso("train", "model=hf", f"model.name_or_path={tiny_llama_dir}", f"outputs_root={outputs}",
                 "train.eval_val=true", *SMALL)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    runs = list(outputs.glob("*/*/artifact/manifest.json"))
    assert len(runs) == 1
    return runs[0].parent.parent, outputs


def test_train_writes_artifact_config_env_and_log(trained, tiny_llama_dir):
    run_dir, _ = trained
    assert run_dir.name.endswith("_hf_occupation")
    for name in ("config.yaml", "env.json", "train_log.csv", "artifact/tensors.safetensors", "artifact/manifest.json"):
        assert (run_dir / name).is_file(), name
    manifest = json.loads((run_dir / "artifact/manifest.json").read_text())
    assert manifest["method"] == "dso" and manifest["model"]["name_or_path"] == str(tiny_llama_dir)
    assert set(manifest["train_metrics"]["val"]) == {"alpha=0", "alpha=1"}
    env = json.loads((run_dir / "env.json").read_text())
    assert env["packages"]["torch"] and "git_commit" in env
    assert env["scoring"]["prefix_tree"] is True and env["scoring"]["linear_kernel"] in ("stock", "onednn")
    assert len(pd.read_csv(run_dir / "train_log.csv")) == 2


def test_sweep_finds_the_newest_run_and_report_compares(trained, tmp_path):
    run_dir, outputs = trained
    # no run_dir: the newest train run of the same model and benchmark
    result = dso(
        "sweep", "alpha=0:1:0.5", "model=hf", f"model.name_or_path={run_dir_model(run_dir)}", f"outputs_root={outputs}"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = pd.read_csv(run_dir / "sweep.csv")
    required = ["method", "alpha", "benchmark", "split", "pob", "pob_se", "item_bias", "item_bias_se",
                "first_option_rate", "order_dep", "stereotype_gap", "unamb_acc", "unamb_acc_hard", "refusal_rate",
                "refusal_rate_unamb", "kl"]  # fmt: skip
    assert set(required) <= set(sweep.columns)
    assert sweep["alpha"].tolist() == [0.0, 0.5, 1.0]
    assert set(sweep["split"]) == {"test"} and set(sweep["method"]) == {"dso"}
    for col in ("pob", "item_bias", "first_option_rate", "order_dep", "stereotype_gap", "unamb_acc", "unamb_acc_hard"):
        assert sweep[col].between(0, 1).all(), col
    assert (sweep["item_bias"] >= sweep["pob"] - 1e-9).all()  # |mean| <= mean |.| within each occupation
    assert sweep[["refusal_rate", "refusal_rate_unamb"]].isna().all().all()  # no "can't tell" option offered
    assert sweep.loc[0, "kl"] == 0.0 and (sweep["pob_se"].notna() & (sweep["pob_se"] > 0)).all()
    # the capability cost off task: held-out neutral text and the split's own prompts, full vocabulary
    assert sweep.loc[0, "text_kl"] == 0.0 and sweep.loc[0, "prompt_kl"] == 0.0
    assert sweep.loc[2, "text_kl"] > 0 and sweep.loc[2, "prompt_kl"] > 0 and (sweep["text_ppl"] > 1).all()
    assert sweep[["text_kl_se", "text_ppl_se", "prompt_kl_se"]].iloc[1:].notna().all().all()
    types = pd.read_csv(run_dir / "sweep_types.csv")
    assert (
        {"occupation", "hiring", "reference"}
        <= set(types["question_type"])
        <= {"occupation", "hiring", "reference", "stated"}
    )
    assert types["n_unambiguous"].groupby(types["alpha"]).sum().tolist() == sweep["n_unambiguous"].tolist()
    # the association outside the decision format, and the decision metrics per answer-format family
    assert sweep["assoc_gap"].between(0, 0.5).all() and sweep["pronoun_control_acc"].between(0, 1).all()
    assert sweep.loc[0, "assoc_gap"] != sweep.loc[2, "assoc_gap"]  # the probes are scored steered
    families = pd.read_csv(run_dir / "sweep_formats.csv")
    assert families["n_ambiguous"].groupby(families["alpha"]).sum().tolist() == sweep["n_ambiguous"].tolist()
    assert len(set(families["answer_format"])) > 2 and families["pob"].between(0, 1).all()
    assert (run_dir / "sweep_config.yaml").is_file() and (run_dir / "sweep_env.json").is_file()

    # a second sweep of another split adds its rows and keeps the first split's
    result = dso("sweep", "alpha=[1]", "sweep.splits=[heldout_occupations]", f"run_dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    both = pd.read_csv(run_dir / "sweep.csv")
    assert len(both) == 4 and sorted(set(both["split"])) == ["heldout_occupations", "test"]

    result = dso("report", f"run_dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("pareto.csv", "pareto.md", "pareto.png"):
        assert (run_dir / "report" / name).stat().st_size > 0
    assert "| curve |" in result.stdout and "hypervolume" in result.stdout
    assert "ppl_ratio_at_max" in result.stdout and "text_kl" in result.stdout
    assert (run_dir / "report/pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # where the DSO run steers: a heatmap and a line in pareto.md
    pareto_md = (run_dir / "report/pareto.md").read_text()
    assert "## Where each method steers" in pareto_md and "of Σ|a|+|b|" in pareto_md
    assert (run_dir / "report/steering_dso.png").stat().st_size > 0

    out = tmp_path / "compare"
    result = dso("report", f"runs=[{run_dir},{run_dir}]", f"report.out_dir={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(pd.read_csv(out / "pareto.csv")["curve"].unique()) == 1  # same run twice, same curve name

    # a report written into the run directory itself leaves every file of the run as it was
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and "report" not in p.parts}
    result = dso("report", f"run_dir={run_dir}", f"report.out_dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert {p: p.read_bytes() for p in before} == before and (run_dir / "report_config.yaml").is_file()
    # an empty (or truncated) config.yaml is refused, not run with today's defaults
    empty = tmp_path / "empty"
    shutil.copytree(run_dir, empty)
    (empty / "config.yaml").write_text("")
    assert_bad_input(dso("sweep", f"run_dir={empty}"), "config.yaml is empty")
    (empty / "config.yaml").write_text("seed: 0\n")
    assert_bad_input(dso("sweep", f"run_dir={empty}"), "not a dso train config (no model section)")


def test_prune_keeps_the_strongest_neurons_and_reevaluates(trained):
    run_dir, _ = trained
    stock = "scoring.cpu_linear=stock"  # auto picks a kernel by timing it: two processes may differ in rounding
    result = dso("prune", "keep=[0.3,1]", f"run_dir={run_dir}", "prune.bootstrap_reps=20", "prune.splits=[val]", stock)
    assert result.returncode == 0, result.stderr[-3000:]
    table = pd.read_csv(run_dir / "prune.csv")
    assert table["keep"].tolist() == [0.0, 0.3, 1.0] and set(table["split"]) == {"val"}
    assert table["alpha"].tolist() == [1.0, 1.0, 1.0] and table.loc[0, "kl"] == 0.0
    assert table.loc[2, "n_kept"] == table.loc[2, "n_neurons"] and table.loc[2, "mass_kept"] == pytest.approx(1)
    assert 0 < table.loc[1, "n_kept"] < table.loc[1, "n_neurons"] and 0.3 < table.loc[1, "mass_kept"] < 1
    # keep = 1 is the unpruned artifact: the same numbers as a sweep at the trained strength
    result = dso("sweep", "alpha=[1]", "sweep.splits=[val]", "sweep.bootstrap_reps=20", f"run_dir={run_dir}", stock)
    assert result.returncode == 0, result.stderr[-3000:]
    swept = pd.read_csv(run_dir / "sweep.csv").query("split == 'val' and alpha == 1").iloc[0]
    for col in ("pob", "pob_se", "unamb_acc", "kl"):
        assert table.loc[2, col] == pytest.approx(swept[col], abs=1e-12, nan_ok=True), col
    pruned = Artifact.load(run_dir / "pruned/keep_0.3")
    assert pruned.manifest["pruned"]["n_kept"] == table.loc[1, "n_kept"]
    assert sum(int(t.count_nonzero()) for k, t in pruned.tensors.items() if k.endswith(".a")) <= table.loc[1, "n_kept"]
    assert (run_dir / "prune_config.yaml").is_file()
    assert_bad_input(dso("prune", "keep=1.5", f"run_dir={run_dir}"), "fractions of neurons must lie in (0, 1]")


def test_eval_fills_one_table_across_benchmarks(trained, tmp_path):
    run_dir, _ = trained
    result = dso(
        "eval", f"run_dir={run_dir}", "eval.benchmarks=[occupation,winobias,bbq]",
        "eval.capability=[mmlu_dev,neutral_text]", "alpha=[0,1]", "bias.test_pairs_per_type=3",
        "capability.max_per_subject=1", "capability.max_passages=4", "eval.bootstrap_reps=20",
        "scoring.batch_size=32", "model.device=cpu",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    table = pd.read_csv(run_dir / "eval.csv")
    assert len(table) == 10 and set(table["method"]) == {"dso"}
    assert set(table["benchmark"]) == {"occupation", "winobias", "bbq", "mmlu_dev", "neutral_text"}
    assert {"capability_acc", "ppl", "acc_pro_anti_gap", "s_dis", "s_amb", "acc_amb"} <= set(table.columns)
    rows = {(r.benchmark, r.alpha): r for r in table.itertuples()}
    assert all(rows[(b, 0.0)].kl == 0.0 for b in ("occupation", "winobias", "bbq", "mmlu_dev", "neutral_text"))
    assert rows[("occupation", 1.0)].kl > 0 and rows[("neutral_text", 1.0)].kl > 0
    assert rows[("winobias", 0.0)].n_unambiguous == 12 and pd.notna(rows[("winobias", 0.0)].acc_pro_anti_gap)
    assert pd.notna(rows[("bbq", 1.0)].s_dis) and pd.isna(rows[("occupation", 1.0)].s_dis)
    assert rows[("mmlu_dev", 0.0)].n_unambiguous == 57 and 0 <= rows[("mmlu_dev", 0.0)].capability_acc <= 1
    assert pd.isna(rows[("mmlu_dev", 0.0)].pob) and pd.isna(rows[("occupation", 0.0)].capability_acc)
    assert rows[("neutral_text", 0.0)].ppl > 1 and rows[("neutral_text", 0.0)].n_tokens > 0
    assert "| benchmark | attribute | alpha |" in result.stdout
    assert set(table[table["benchmark"].isin(["occupation", "winobias", "bbq"])]["attribute"]) == {"gender"}
    assert table[table["benchmark"].isin(["mmlu_dev", "neutral_text"])]["attribute"].isna().all()
    rates = pd.read_csv(run_dir / "eval_groups.csv")
    assert set(rates["benchmark"]) == {"occupation", "bbq"} and set(rates["alpha"]) == {0.0, 1.0}  # ambiguous items
    assert set(rates[rates["benchmark"] == "bbq"]["group"]) >= {"male", "female", "unknown"}
    two_people = rates[rates["benchmark"] == "occupation"].groupby("alpha")["selection_rate"].sum()
    assert two_people.to_numpy() == pytest.approx([1.0, 1.0])  # every item offers both groups, nothing else
    subjects = pd.read_csv(run_dir / "eval_subjects.csv")
    assert len(subjects) == 2 * 57 and set(subjects["alpha"]) == {0.0, 1.0}
    assert (run_dir / "eval_config.yaml").is_file()

    # the base model alone, no artifact: method "none", one strength
    base_dir = tmp_path / "base"
    result = dso(
        "eval", "eval.steer=false", "model=hf", f"model.name_or_path={run_dir_model(run_dir)}", f"run_dir={base_dir}",
        "eval.benchmarks=[winobias]", "eval.capability=[]", "bias.test_pairs_per_type=2", "model.device=cpu",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    base = pd.read_csv(base_dir / "eval.csv")
    assert base["method"].tolist() == ["none"] and base["alpha"].tolist() == [0.0]


@pytest.mark.parametrize("method", ["none", "prompting", "caa", "iti", "mean_match", "leace"])
def test_baselines_train_and_sweep_through_the_cli(method, tiny_llama_dir, tmp_path):
    run_dir = tmp_path / method
    result = dso(
        "train", f"steering_method={method}", "model=hf", f"model.name_or_path={tiny_llama_dir}", f"run_dir={run_dir}",
        "train.eval_val=true", *SMALL,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((run_dir / "artifact/manifest.json").read_text())
    assert manifest["method"] == method and set(manifest["train_metrics"]["val"]) == {"alpha=0", "alpha=1"}
    if method == "none":  # no alpha given: the method's own default grid (just 0 for the base model)
        result = dso("sweep", f"run_dir={run_dir}")
        assert result.returncode == 0, result.stderr[-3000:]
        assert pd.read_csv(run_dir / "sweep.csv")["alpha"].tolist() == [0.0]
    result = dso("sweep", "alpha=[0,1]", f"run_dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = pd.read_csv(run_dir / "sweep.csv")
    assert set(sweep["method"]) == {method} and sweep["alpha"].tolist() == [0.0, 1.0]
    if method == "none":
        assert sweep["pob"].nunique() == 1


def test_compare_runs_every_method_once_resumes_and_reports(tiny_llama_dir, tmp_path):
    run_dir = tmp_path / "compare"
    args = ["model=hf", f"model.name_or_path={tiny_llama_dir}", f"run_dir={run_dir}", "compare.grids.caa=[0,1]",
            "compare.options.caa.candidate_layers=[0,1]", *SMALL]  # fmt: skip
    result = dso("compare", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "one run over them for all baselines" in result.stdout
    data = pd.read_csv(run_dir / "compare.csv")
    methods = ["none", "prompting", "caa", "iti", "mean_match", "leace", "projection", "leace_association", "dso"]
    assert set(data["method"]) == set(methods) and set(data["split"]) == {"val", "test"}
    test = data[data["split"] == "test"]
    assert test[test["method"] == "caa"]["alpha"].tolist() == [0.0, 1.0]
    assert test[test["method"] == "dso"]["alpha"].tolist() == [0.0, 0.25, 0.5, 1.0]
    base = test[test["alpha"] == 0.0]
    assert len(base) == len(methods) and base["pob"].nunique() == 1 and (base["kl"] == 0).all()
    summary = pd.read_csv(run_dir / "report/summary.csv")
    assert summary["method"].tolist() == methods
    assert summary["hypervolume"].notna().all() and summary["best_alpha"].notna().all()
    for name in ("compare.md", "pareto.png", "pareto.csv"):
        assert (run_dir / "report" / name).stat().st_size > 0
    for method in methods:  # every method's directory is a run `dso sweep` can use
        assert (run_dir / method / "artifact/manifest.json").is_file() and (run_dir / method / "config.yaml").is_file()
    manifest = json.loads((run_dir / "caa/artifact/manifest.json").read_text())
    assert len(manifest["hyperparameters"]["layer_selection"]["candidates"]) == 2

    # interrupted after some rows: the rerun fits nothing again and measures only what is missing
    fitted = {m: (run_dir / m / "artifact/tensors.safetensors").stat().st_mtime_ns for m in methods}
    data[~((data["method"] == "dso") & (data["split"] == "test"))].to_csv(run_dir / "compare.csv", index=False)
    result = dso("compare", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("already fitted") == len(methods)
    assert fitted == {m: (run_dir / m / "artifact/tensors.safetensors").stat().st_mtime_ns for m in methods}
    again = pd.read_csv(run_dir / "compare.csv").sort_values(["method", "split", "alpha"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(again, data.sort_values(["method", "split", "alpha"]).reset_index(drop=True))

    result = dso("sweep", "alpha=[0,1]", f"run_dir={run_dir / 'leace'}")
    assert result.returncode == 0, result.stderr[-3000:]
    # a finished DSO run can be reused instead of trained again
    # (and more trained runs join as curves of their own, over their method's grid)
    reuse = dso("compare", *args[:2], f"run_dir={tmp_path / 'reuse'}", "compare.methods=[none,dso]",
                f"compare.dso_run={run_dir / 'dso'}", f"compare.runs.dso_again={run_dir / 'dso'}", *SMALL)  # fmt: skip
    assert reuse.returncode == 0, reuse.stderr[-3000:]
    reused, original = (Artifact.load(d / "dso/artifact") for d in (tmp_path / "reuse", run_dir))
    assert all(torch.equal(reused.tensors[k], original.tensors[k]) for k in original.tensors)
    again = pd.read_csv(tmp_path / "reuse/compare.csv")
    assert set(again["method"]) == {"none", "dso", "dso_again"}
    both = again[again["split"] == "test"].set_index(["method", "alpha"])
    assert both.loc["dso_again"]["pob"].tolist() == both.loc["dso"]["pob"].tolist()
    assert_bad_input(dso("compare", f"compare.runs.caa={run_dir / 'dso'}"), "must not be a method's name")
    assert_bad_input(dso("compare", f"compare.runs.other={tmp_path}"), "is not a train run directory")
    # a comparison's method directories are not "the newest train run" that sweep/report pick up
    newest = dso("sweep", f"outputs_root={tmp_path}", "model=hf", f"model.name_or_path={tiny_llama_dir}")
    assert_bad_input(newest, "no trained run of")
    assert_bad_input(dso("compare", "compare.methods=[caa,magic]"), "unknown steering method 'magic'")
    assert_bad_input(dso("compare", "compare.grids.caa=0:x"), "does not parse")
    assert_bad_input(dso("compare", "compare.options.caa.layerz=[1]"), "compare.options.caa.layerz is not a setting")
    assert_bad_input(dso("compare", f"run_dir={run_dir}", "model=smollm2_135m"), "holds a comparison made with other")
    other_seed = dso("compare", *args, "seed=7")  # the same run_dir resumed with another seed would mix two runs
    assert_bad_input(other_seed, "seed=0 (now 7)")


def test_train_resumes_to_the_same_parameters_and_takes_estimators_and_rewards(tiny_llama_dir, tmp_path):
    model = ["model=hf", f"model.name_or_path={tiny_llama_dir}", "train.eval_val=false"]
    # constant learning rate: a cosine schedule depends on the total steps, which the resume changes here
    small = [a for a in SMALL if not a.startswith("optimizer.steps")] + ["optimizer.lr_schedule=constant"]
    straight, part = tmp_path / "straight", tmp_path / "part"
    for run_dir, steps in ((straight, 4), (part, 2)):
        result = dso("train", *model, f"run_dir={run_dir}", f"optimizer.steps={steps}", "optimizer.checkpoint_every=1",
                     *small)  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
    shutil.rmtree(part / "artifact")  # as if stopped after step 2 (its checkpoint)
    result = dso("train", "resume=true", f"run_dir={part}", "optimizer.steps=4")
    assert result.returncode == 0, result.stderr[-3000:]
    a, b = (Artifact.load(d / "artifact") for d in (straight, part))
    assert all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors)
    assert pd.read_csv(part / "train_log.csv")["step"].tolist() == [1, 2, 3, 4]
    assert_bad_input(dso("train", "resume=true", f"run_dir={part}"), "already finished")
    assert_bad_input(dso("train", "resume=true", f"run_dir={tmp_path / 'new'}"), "no checkpoint.pt")
    assert_bad_input(dso("train", "optimizer.estimator=a2c"), "optimizer.estimator must be one of")
    result = dso("train", *model, f"run_dir={tmp_path / 'rloo'}", "optimizer.estimator=rloo", "reward=abs_gap",
                 "optimizer.kl_mode=constraint", "optimizer.kl_text_passages=1", *SMALL)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    log = pd.read_csv(tmp_path / "rloo/train_log.csv")
    assert {"kl_text", "dual_kl", "dual_kl_text"} <= set(log.columns)


def test_eval_bad_input(trained, tmp_path):
    run_dir, _ = trained
    assert_bad_input(dso("eval", f"run_dir={run_dir}", "eval.benchmarks=[nope]"), "unknown bias benchmark 'nope'")
    assert_bad_input(dso("eval", f"run_dir={run_dir}", "eval.capability=[mmlx]"), "unknown capability set 'mmlx'")
    # SynthBias with no path, offline, nothing cached: one line naming both ways to provide it
    result = dso("eval", f"run_dir={run_dir}", "eval.benchmarks=[synthbias]", DSO_CACHE=str(tmp_path))
    assert_bad_input(result, "bias.path=")
    assert "https://raw.githubusercontent.com/apple/ml-synthbias" in result.stderr
    result = dso("eval", f"run_dir={run_dir}", "eval.benchmarks=[synthbias]", f"bias.path={tmp_path / 'x.csv'}")
    assert_bad_input(result, "x.csv does not exist")
    # a typo in a benchmark or capability setting is refused, not ignored
    typo = dso("eval", f"run_dir={run_dir}", "eval.benchmarks=[synthbias]", "bias.pth=/data/x.csv")
    assert_bad_input(typo, "bias.pth is not a setting of any evaluated set (synthbias)")
    typo = dso("eval", f"run_dir={run_dir}", "eval.capability=[mmlu_dev]", "capability.max_item=3")
    assert_bad_input(typo, "capability.max_item is not a setting")


def test_sweep_of_a_folder_sweeps_each_of_its_runs_and_report_averages_the_seeds(trained, tmp_path):
    run_dir, _ = trained
    folder = tmp_path / "multirun"
    for job in ("0", "1"):
        shutil.copytree(run_dir / "artifact", folder / job / "artifact")
        shutil.copy(run_dir / "config.yaml", folder / job / "config.yaml")
    result = dso("sweep", f"run_dir={folder}", "alpha=[0,1]", "heldout_text.max_passages=2")
    assert result.returncode == 0, result.stderr[-3000:]
    sweeps = [pd.read_csv(folder / job / "sweep.csv") for job in ("0", "1")]
    assert all(s["alpha"].tolist() == [0.0, 1.0] for s in sweeps)
    pd.testing.assert_frame_equal(sweeps[0], sweeps[1])  # the same artifact swept twice
    result = dso("report", f"runs=[{folder}]")
    assert result.returncode == 0, result.stderr[-3000:]
    points = pd.read_csv(folder / "report" / "pareto.csv")
    assert points["curve"].tolist() == ["dso", "dso"] and (points["n_seeds"] == 2).all()  # same settings: one curve
    assert (points["pob_seed_sd"] == 0).all()


def run_dir_model(run_dir: Path) -> str:
    from omegaconf import OmegaConf

    return OmegaConf.load(run_dir / "config.yaml").model.name_or_path


def test_assets_lists_the_offline_wheels_and_their_status():
    from dso_cli.benchmarks.assets import OFFLINE_ASSETS

    result = dso("assets")
    assert result.returncode == 0, result.stderr
    for asset in OFFLINE_ASSETS:  # make setup installed every one of them
        assert f"{asset.distribution}=={asset.version}" in result.stdout
    assert "smollm2" in result.stdout.lower() and "missing" not in result.stdout
    assert_bad_input(dso("assets", "upgrade"), "usage: dso assets [install]")


def test_help_and_composed_config():
    result = dso("--help")
    assert result.returncode == 0
    for word in (
        "train",
        "sweep",
        "report",
        "model",
        "bias_benchmark",
        "steering_method",
        "optimizer",
        "reward",
        "logger",
        "capability",
        "assets",
    ):
        assert word in result.stdout
    bracketed = [w for line in result.stdout.splitlines() for w in line.split() if "=[" in w and w[0] not in "\"'"]
    assert not bracketed, f"unquoted brackets a shell would expand: {bracketed}"
    result = dso("train", "bias=occupation", "model=qwen2_5_3b", "--cfg", "job")
    assert result.returncode == 0, result.stderr
    assert "name_or_path: Qwen/Qwen2.5-3B-Instruct" in result.stdout and "n_train: 600" in result.stdout
    result = dso("train", "--help")
    groups = "bias_benchmark: bbq, decisions, mixture, occupation, synthbias, winobias"
    assert result.returncode == 0 and groups in result.stdout


def test_the_process_exits_2_with_one_line_on_bad_input(tmp_path):
    """The contract as a shell sees it (a real process: status and everything it prints); the other
    bad-input tests call the CLI in process."""
    assert_bad_input(dso_process("train", "model=no_such_model"), "unknown model 'no_such_model'")
    assert_bad_input(dso_process("sweep", "alpha=1:0:oops", f"run_dir={tmp_path}"), "does not parse")
    assert_bad_input(dso_process("frobnicate"), "unknown verb")
    assert_bad_input(dso_process("sweep", f"run_dir={tmp_path / 'missing'}"), "does not exist")


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    assert_bad_input(dso("train", "model=no_such_model"), "unknown model 'no_such_model'")
    assert_bad_input(dso("train", "bias=nope"), "unknown bias 'nope'")
    assert_bad_input(dso("sweep", "alpha=1:0:oops", f"run_dir={tmp_path}"), "does not parse")
    assert_bad_input(dso("frobnicate"), "unknown verb")
    assert_bad_input(dso("train", "optimizer.lr=fast"), "optimizer.lr")
    assert_bad_input(dso("train", "bias=winobias", f"run_dir={tmp_path / 'w'}"), "no ambiguous training items")
    (tmp_path / "config.yaml").write_text("model: {name: x, name_or_path: y}\nbias_benchmark: {name: occupation}\n")
    assert_bad_input(dso("sweep", f"run_dir={tmp_path}"), "has no trained artifact")
    assert_bad_input(dso("sweep", f"run_dir={tmp_path / 'missing'}"), "does not exist")
    assert_bad_input(dso("report", f"runs=[{tmp_path}]"), "has no sweep.csv")
    assert_bad_input(
        dso("train", "model=hf", f"model.name_or_path={tmp_path / 'nope'}", f"run_dir={tmp_path / 'r'}"),
        "does not exist",
    )


def test_mixture_trains_on_both_benchmarks_and_each_is_evaluated(tiny_llama_dir, tmp_path):
    from tests.test_generalization import write_synthbias_like

    csv = write_synthbias_like(tmp_path / "sb.csv")
    run_dir = tmp_path / "mix"
    result = dso("train", "bias=mixture", "bias.benchmarks=[occupation,synthbias]", f"bias.path={csv}",
                 "model=hf", f"model.name_or_path={tiny_llama_dir}", f"run_dir={run_dir}", *SMALL)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    log = pd.read_csv(run_dir / "train_log.csv")
    assert {"batch_pob_occupation", "batch_pob_synthbias"} <= set(log.columns)
    result = dso("sweep", f"run_dir={run_dir}", "alpha=[0,1]", "sweep.bootstrap_reps=20", "heldout_text.max_passages=4")
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = pd.read_csv(run_dir / "sweep.csv")
    assert sorted(set(sweep["benchmark"])) == ["occupation", "synthbias"] and len(sweep) == 4
    result = dso("report", f"run_dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(pd.read_csv(run_dir / "report/pareto.csv")["curve"].unique()) == 2  # one curve per member
    result = dso("eval", f"run_dir={run_dir}", "eval.benchmarks=[occupation,synthbias]", "eval.capability=[]",
                 "alpha=[0,1]", f"bias.path={csv}", "eval.bootstrap_reps=20")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    table = pd.read_csv(run_dir / "eval.csv")
    assert sorted(set(table["benchmark"])) == ["occupation", "synthbias"] and len(table) == 4
    # the members' test splits are the ones the mixture held out (same items as the sweep)
    for bench in ("occupation", "synthbias"):
        swept = sweep.query(f"benchmark == '{bench}' and alpha == 1").iloc[0]
        evaluated = table.query(f"benchmark == '{bench}' and alpha == 1").iloc[0]
        assert evaluated["pob"] == pytest.approx(swept["pob"], abs=1e-6)
        assert evaluated["n_ambiguous"] == swept["n_ambiguous"]
