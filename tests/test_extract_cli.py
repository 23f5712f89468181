"""`dso extract`, baseline fits reading its cache, and `dso analyze`, end to end on a tiny local model."""

import json

import pandas as pd
import pytest

from tests.cli_runner import assert_bad_input, dso

TINY = ["model=hf", "bias.n_train=64", "bias.n_train_unambiguous=8", "bias.test_pairs_per_occupation=1",
        "bias.val_pairs_per_occupation=1", "model.device=cpu", "extract.shard_items=10"]  # fmt: skip


@pytest.fixture(scope="module")
def extracted(tiny_llama_dir, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("extract")
    first = dso("extract", f"run_dir={run_dir}", f"model.name_or_path={tiny_llama_dir}", *TINY)
    assert first.returncode == 0, first.stderr[-3000:]
    return run_dir, first


def test_extract_writes_shards_and_a_manifest_and_the_second_run_loads(extracted, tiny_llama_dir):
    run_dir, first = extracted
    (entry,) = [p.parent for p in run_dir.glob("*/manifest.json")]
    assert "dso extract: wrote" in first.stdout
    manifest = json.loads((entry / "manifest.json").read_text())
    assert manifest["n_items"] == 38 and manifest["positions"] == "answer" and manifest["split"] == "train"
    assert manifest["model"]["name_or_path"] == str(tiny_llama_dir) and manifest["model"]["fingerprint"]
    shards = sorted(p.name for p in entry.glob("*.safetensors"))
    assert shards == [f"items-{a:07d}-{b:07d}.safetensors" for a, b in ((0, 10), (10, 20), (20, 30), (30, 38))]
    assert {where for where, _ in manifest["modules"]} == {"output", "input"}  # norms + residual, and heads
    assert len(manifest["labels"]["id"]) == 38 and (run_dir / "extract_config.yaml").is_file()
    second = dso("extract", f"run_dir={run_dir}", f"model.name_or_path={tiny_llama_dir}", *TINY)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "cached, nothing to compute" in second.stdout
    assert sorted(run_dir.glob("*/manifest.json")) == [entry / "manifest.json"]
    changed = dso("extract", f"run_dir={run_dir}", f"model.name_or_path={tiny_llama_dir}", *TINY,
                  "extract.modules=[residual]", "extract.positions=last_prompt")  # fmt: skip
    assert changed.returncode == 0 and "dso extract: wrote" in changed.stdout
    assert len(list(run_dir.glob("*/manifest.json"))) == 2


@pytest.mark.parametrize("method", ["caa", "iti", "mean_match", "leace"])
def test_baseline_fits_read_the_extract_cache(extracted, tiny_llama_dir, tmp_path, method):
    run_dir, _ = extracted
    entries = sorted(run_dir.glob("*/manifest.json"))
    result = dso("train", f"steering_method={method}", f"run_dir={tmp_path / method}", f"extract.cache={run_dir}",
                 f"model.name_or_path={tiny_llama_dir}", "train.eval_val=false", *TINY)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "activations: read from" in result.stdout and "activations: recorded" not in result.stdout
    assert sorted(run_dir.glob("*/manifest.json")) == entries  # nothing had to be recorded


def test_extract_labels_an_entry_a_baseline_fit_wrote(tiny_llama_dir, tmp_path):
    cache = tmp_path / "cache"
    common = [f"model.name_or_path={tiny_llama_dir}", *TINY]
    fit = dso("train", "steering_method=caa", f"run_dir={tmp_path / 'caa'}", f"extract.cache={cache}",
              "train.eval_val=false", *common)  # fmt: skip
    assert fit.returncode == 0 and "activations: recorded into" in fit.stdout, fit.stderr[-3000:]
    (manifest,) = cache.glob("*/manifest.json")
    assert "labels" not in json.loads(manifest.read_text())
    # the fit recorded both decoder layers of the tiny model: extract finds them and adds the labels
    result = dso("extract", f"run_dir={cache}", "extract.modules=[residual]", *common)
    assert result.returncode == 0 and "cached, nothing to compute" in result.stdout, result.stderr[-3000:]
    assert json.loads(manifest.read_text())["labels"]["id"]
    assert dso("analyze", f"run_dir={cache}", "analyze.folds=2").returncode == 0


def test_analyze_plots_the_probes_of_an_extract_run(extracted):
    run_dir, _ = extracted
    result = dso("analyze", f"run_dir={run_dir}", "analyze.folds=3")
    assert result.returncode == 0, result.stderr[-3000:]
    report = run_dir / "report"
    frame = pd.read_csv(report / "signal_by_layer.csv")
    assert frame["layer"].tolist() == [0, 1]
    assert (report / "signal_by_layer.png").stat().st_size > 0 and "Where the signal lives" in (
        report / "where.md"
    ).read_text()


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        (["extract.positions=middle"], "extract.positions='middle'"),
        (["extract.dtype=int8"], "extract.dtype='int8'"),
        (["extract.split=dev"], "extract.split='dev'"),
    ],
)
def test_extract_bad_input_is_one_line(tiny_llama_dir, tmp_path, args, pattern):
    assert_bad_input(
        dso("extract", f"run_dir={tmp_path}", f"model.name_or_path={tiny_llama_dir}", *TINY, *args), pattern
    )


def test_unknown_module_is_a_clear_error_after_loading(tiny_llama_dir, tmp_path):
    result = dso(
        "extract", f"run_dir={tmp_path}", f"model.name_or_path={tiny_llama_dir}", *TINY, "extract.modules=[mlps]"
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr  # module names need the loaded model
    assert "extract.modules: 'mlps' is neither norms, residual, heads nor a module" in result.stderr.splitlines()[-1]


def test_analyze_without_anything_to_analyze_is_one_line(tmp_path):
    assert_bad_input(dso("analyze", f"run_dir={tmp_path}"), "holds neither cached activations")
