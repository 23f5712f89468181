"""lm-evaluation-harness: `lm_eval --model dso` applies any dso artifact, and its scores on the shipped
local task equal dso's own scoring of the same items; `dso eval eval.lm_eval_tasks=[...]` merges them."""

import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from lm_eval import simple_evaluate

import dso_cli
from dso_cli.integrations.harness import task_manager
from dso_cli.integrations.lm_eval import DsoLM
from dso_cli.scoring import OptionScorer, policy
from tests.cli_runner import SMALL, dso
from tests.conftest import build_tiny_model

ROOT = Path(__file__).resolve().parent.parent
TASKS = ROOT / "examples" / "lm_eval_tasks"
TASK = "dso_occupation_mc"
LIMIT = 24


def task_items(limit: int = LIMIT) -> list[dict]:
    rows = [json.loads(line) for line in (TASKS / "occupation_unambiguous.jsonl").read_text().splitlines()][:limit]
    return [dict(r, ambiguous=False, option_groups=["male", "female"], pro_option=-1, anti_option=-1,
                 attribute="gender", question_type="", pair_id=r["id"], benchmark="occupation", split="test")
            for r in rows]  # fmt: skip


def dso_scores(scorer: OptionScorer, artifact, strength: float) -> tuple[float, float]:
    """dso's own accuracy and Brier score of the task's items (no chat template, like the task)."""
    items = task_items()
    with artifact.steer(scorer, strength):
        probs = policy(scorer.logprobs(items)).double()
    gold = torch.tensor([it["correct"] for it in items])
    onehot = torch.nn.functional.one_hot(gold, probs.shape[1]).double()
    return float((probs.argmax(1) == gold).double().mean()), float(((probs - onehot) ** 2).sum(1).mean())


def harness_scores(lm) -> tuple[float, float]:
    cwd = os.getcwd()
    os.chdir(ROOT)  # the task's data_files is relative to the repository root
    try:
        out = simple_evaluate(model=lm, tasks=[TASK], task_manager=task_manager(str(TASKS), [TASK]), limit=LIMIT)
    finally:
        os.chdir(cwd)
    result = out["results"][TASK]
    return result["acc,none"], result["brier_score,none"]


def assert_harness_is_dso_scoring(model, tokenizer, artifact, tolerance: float) -> None:
    """At strength 0 and 1, lm-eval's accuracy and Brier score of the task equal dso's own, and move."""
    scorer = OptionScorer(model, tokenizer, chat_template=False)
    briers = []
    for strength in (0.0, 1.0):
        lm = DsoLM(pretrained=model, tokenizer=tokenizer, artifact=artifact, strength=strength, batch_size=4)
        try:
            acc, brier = harness_scores(lm)
        finally:
            lm.close()
        want_acc, want_brier = dso_scores(scorer, artifact, strength)
        assert acc == pytest.approx(want_acc) and brier == pytest.approx(want_brier, abs=tolerance)
        briers.append(brier)
    assert abs(briers[0] - briers[1]) > 10 * tolerance  # the steering reaches lm-eval's requests


@pytest.mark.parametrize("method", ["mean_match", "caa", "prompting"])
def test_harness_scores_equal_dso_scoring_and_move_with_strength(method, tokenizer, items):
    model = build_tiny_model("llama", tokenizer)
    artifact = dso_cli.fit(method, model, tokenizer, items, **({"layers": [1]} if method == "caa" else {}))
    assert_harness_is_dso_scoring(model, tokenizer, artifact, 1e-5)
    with torch.no_grad():  # closing the model type leaves the base model
        ids = torch.tensor([[1, 2, 3]])
        assert torch.equal(model(ids).logits, build_tiny_model("llama", tokenizer)(ids).logits)


def test_plugin_registers_dso_in_a_fresh_lm_eval():
    code = ("from dso_cli.integrations.lm_eval_plugin import watch; watch(); "
            "from lm_eval.api.registry import get_model; print(get_model('dso').__name__)")  # fmt: skip
    out = subprocess.run([sys.executable, "-S", "-c", f"import site; site.main(); {code}"], capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0 and out.stdout.strip() == "DsoLM", out.stderr[-2000:]


@pytest.fixture(scope="module")
def run_dir(tiny_llama_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("lm_eval") / "run"
    result = dso("train", "model=hf", f"model.name_or_path={tiny_llama_dir}", f"run_dir={run}",
                 "steering_method=mean_match", *SMALL)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return run


def test_lm_eval_cli_with_model_dso(run_dir, tiny_llama_dir, tmp_path):
    """`lm_eval --model dso` (a fresh process: the entry point lm-eval finds) scores what the same model
    type scores in process at that strength, and the strength moves it."""
    args = f"pretrained={tiny_llama_dir},artifact={run_dir / 'artifact'},strength=1,dtype=float32"
    out = subprocess.run(
        [str(Path(sys.executable).with_name("lm_eval")), "--model", "dso", "--model_args", args, "--tasks", TASK,
         "--include_path", str(TASKS), "--limit", str(LIMIT), "--output_path", str(tmp_path / "s1")],
        capture_output=True, text=True, cwd=ROOT, timeout=600, env=dict(os.environ, HF_HUB_OFFLINE="1"),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    (path,) = glob.glob(str(tmp_path / "s1" / "**" / "results_*.json"), recursive=True)
    cli = json.loads(Path(path).read_text())["results"][TASK]
    in_process = {}
    for strength in (0, 1):
        lm = DsoLM(pretrained=str(tiny_llama_dir), artifact=str(run_dir / "artifact"), strength=strength,
                   dtype="float32", device="cpu")  # fmt: skip
        try:
            in_process[strength] = harness_scores(lm)
        finally:
            lm.close()
    assert (cli["acc,none"], cli["brier_score,none"]) == pytest.approx(in_process[1])
    assert in_process[0][1] != in_process[1][1]


def test_dso_eval_merges_harness_tasks(run_dir):
    result = dso("eval", f"run_dir={run_dir}", "alpha=[0,1]", "eval.benchmarks=[occupation]", "eval.capability=[]",
                 f"eval.lm_eval_tasks=[{TASK}]", f"eval.lm_eval_include_path={TASKS}", f"eval.lm_eval_limit={LIMIT}",
                 "eval.bootstrap_reps=10")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    rows = pd.read_csv(run_dir / "eval.csv")
    harness = rows[rows["benchmark"] == f"lm_eval/{TASK}"]
    assert sorted(harness["alpha"]) == [0.0, 1.0] and harness["capability_acc"].notna().all()
    metrics = pd.read_csv(run_dir / "eval_lm_eval.csv")
    assert set(metrics["metric"]) == {"acc", "brier_score"} and len(metrics) == 4
    bad = dso("eval", f"run_dir={run_dir}", "eval.lm_eval_tasks=[no_such_task]")
    assert bad.returncode == 2 and "unknown lm-eval task 'no_such_task'" in bad.stderr
