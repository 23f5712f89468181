"""bias=decisions: a user's own decision file (JSONL, CSV, Parquet or a hub dataset) is validated row
by row, split by cluster and pair (or by its split column), and works with every verb."""

import csv
import json
from pathlib import Path

import pandas as pd
import pytest

from dso_cli.benchmarks import build_benchmark
from dso_cli.benchmarks.decisions import build
from dso_cli.errors import DsoError
from tests.cli_runner import assert_bad_input, dso

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "decisions" / "hiring.jsonl"
ROWS = [json.loads(line) for line in EXAMPLE.read_text().splitlines()]
SMALL = ["optimizer.steps=2", "optimizer.occupations_per_batch=2", "optimizer.unambiguous_per_batch=4",
         "scoring.batch_size=32", "model.device=cpu", "optimizer.kl_text_passages=1"]  # fmt: skip


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_example_splits_by_cluster_and_pair():
    splits = build(str(EXAMPLE))
    assert set(splits) == {"train", "val", "test"}
    assert sum(len(s) for s in splits.values()) == len(ROWS)
    pair_split = {}
    for name, split in splits.items():
        for item in split:
            assert pair_split.setdefault(item["pair_id"], name) == name  # a pair never straddles splits
    clusters = {r["cluster"] for r in ROWS}
    for name in ("val", "test"):
        assert {it["cluster"] for it in splits[name] if it["ambiguous"]} == clusters  # one pair per cluster
    assert build(str(EXAMPLE))["test"]["id"] == splits["test"]["id"]  # seeded
    assert build(str(EXAMPLE), seed=1)["test"]["id"] != splits["test"]["id"]
    item = next(it for it in splits["train"] if it["ambiguous"])
    assert item["anti_option"] == 1 - item["pro_option"] and item["correct"] == -1  # the other gender's option


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda r: r.pop("options"), "options"),
        (lambda r: r.update(stereotyped=7), "stereotyped"),
        (lambda r: r.update(options=[" James"], option_groups=["male"]), "options"),
        (lambda r: r.update(option_groups=["male", "robot"]), "option_groups"),
        (lambda r: r.update(correct="first"), "correct"),
        (lambda r: r.pop("pair_id"), "pair_id"),
    ],
)
def test_a_bad_row_is_named_by_file_line_and_field(tmp_path, change, field):
    rows = [dict(r) for r in ROWS]
    change(rows[2])
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DsoError, match=rf"{path}.*line 3: field '{field}'"):
        build(str(path))


def test_every_bad_row_is_reported_and_a_missing_twin_is_named(tmp_path):
    rows = [dict(r) for r in ROWS]
    rows[2].pop("prompt")
    rows[40]["options"] = "not a list"
    del rows[7]  # line 7 (0-based 6) loses its twin
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DsoError) as caught:
        build(str(path))
    message = str(caught.value)
    assert "line 3: field 'prompt'" in message and "line 40: field 'options'" in message
    assert "line 7: field 'pair_id'" in message and "counterbalanced twin" in message
    assert "nothing was read" in message and "\n" not in message


def test_csv_and_parquet_read_as_the_jsonl(tmp_path):
    frame = pd.DataFrame(ROWS)
    frame.to_parquet(tmp_path / "d.parquet")
    with (tmp_path / "d.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(frame.columns))
        writer.writeheader()
        for row in ROWS:
            writer.writerow({k: json.dumps(v) if isinstance(v, list) else v for k, v in row.items()})
    want = build(str(EXAMPLE))
    for name in ("d.parquet", "d.csv"):
        got = build(str(tmp_path / name))
        for split in want:
            assert got[split].to_list() == want[split].to_list(), (name, split)


def test_a_split_column_is_used_and_must_be_on_every_row(tmp_path):
    rows = [dict(r, split="test" if i % 4 == 0 else "train") for i, r in enumerate(ROWS)]
    splits = build(str(write_jsonl(tmp_path / "s.jsonl", rows)))
    assert len(splits["test"]) == len(ROWS) // 4 and set(splits) == {"train", "test"}
    rows[5].pop("split")
    with pytest.raises(DsoError, match="line 6: field 'split'"):
        build(str(write_jsonl(tmp_path / "partial.jsonl", rows)))


def test_a_hub_dataset_reads_through_datasets(tmp_path):
    (tmp_path / "hub").mkdir()
    write_jsonl(tmp_path / "hub" / "train.jsonl", ROWS)  # a local stand-in with the hub layout
    splits = build(hub_id=str(tmp_path / "hub"))
    assert splits["test"]["id"] == build(str(EXAMPLE))["test"]["id"]
    with pytest.raises(DsoError, match=r"bias\.path=FILE"):
        build()


def test_the_benchmark_composes_from_its_config():
    cfg = {"_target_": "dso_cli.benchmarks.decisions.build", "name": "hiring", "path": str(EXAMPLE)}
    splits = build_benchmark(cfg)
    assert set(splits["train"]["benchmark"]) == {"hiring"}


@pytest.fixture(scope="module")
def decisions_run(tiny_llama_dir, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("decisions") / "run"
    result = dso("train", "model=hf", f"model.name_or_path={tiny_llama_dir}", "bias=decisions",
                 f"bias.path={EXAMPLE}", f"run_dir={run_dir}", *SMALL)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


def test_every_verb_runs_on_a_decision_file(decisions_run, tiny_llama_dir, tmp_path):
    model = ["model=hf", f"model.name_or_path={tiny_llama_dir}", "model.device=cpu"]
    sweep = dso("sweep", f"run_dir={decisions_run}", "alpha=[0,1]", "sweep.bootstrap_reps=10",
                "heldout_text.max_passages=2")  # fmt: skip
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    rows = pd.read_csv(decisions_run / "sweep.csv")
    assert set(rows["benchmark"]) == {"decisions"} and rows["pob"].notna().all()
    evaluated = dso("eval", f"run_dir={decisions_run}", "alpha=[0,1]", "eval.benchmarks=[decisions]",
                    "eval.bootstrap_reps=10")  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    compared = dso("compare", *model, "bias=decisions", f"bias.path={EXAMPLE}", "compare.methods=[none,caa]",
                   f"run_dir={tmp_path / 'compare'}", "compare.bootstrap_reps=10",
                   "compare.hypervolume_bootstrap_reps=10", "heldout_text.max_passages=2")  # fmt: skip
    assert compared.returncode == 0, compared.stderr[-3000:]
    extracted = dso("extract", *model, "bias=decisions", f"bias.path={EXAMPLE}", f"run_dir={tmp_path / 'extract'}",
                    "extract.modules=[residual]")  # fmt: skip
    assert extracted.returncode == 0, extracted.stderr[-3000:]
    analyzed = dso("analyze", f"run_dir={tmp_path / 'extract'}", "analyze.folds=2")
    assert analyzed.returncode == 0, analyzed.stderr[-3000:]


def test_a_bad_file_is_refused_before_anything_is_written(tiny_llama_dir, tmp_path):
    rows = [dict(r) for r in ROWS]
    rows[2].pop("options")
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    result = dso("train", "model=hf", f"model.name_or_path={tiny_llama_dir}", "bias=decisions", f"bias.path={path}",
                 f"run_dir={tmp_path / 'run'}", *SMALL)  # fmt: skip
    assert_bad_input(result, "line 3: field 'options'")
    assert not (tmp_path / "run" / "artifact").exists()
