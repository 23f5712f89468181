"""`dso train -> sweep -> report` on tiny random VLMs of every family, with an image-pair benchmark."""

import json

import pandas as pd
import pytest
import torch
from PIL import Image

from dso_cli.benchmarks.occupation import build
from dso_cli.steering.artifact import Artifact
from tests.cli_runner import dso
from tests.vlm_fixtures import VLM_FAMILIES, _bpe, save_tiny_vlm

OCCUPATIONS = ("nurse", "carpenter", "secretary", "mechanic", "librarian")  # librarian is held out by default
VLM_SMALL = [
    "bias.n_train=24", "bias.n_train_unambiguous=12", "bias.test_pairs_per_occupation=1",
    "bias.val_pairs_per_occupation=1", "optimizer.steps=2", "optimizer.occupations_per_batch=2",
    "optimizer.pairs_per_occupation=1", "optimizer.unambiguous_per_batch=4", "scoring.batch_size=8",
    "model.device=cpu",
]  # fmt: skip


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    """``<occupation>/<male|female>/*.png``: three synthetic people per gender and occupation."""
    root = tmp_path_factory.mktemp("people")
    for o, occupation in enumerate(OCCUPATIONS):
        for g, gender in enumerate(("male", "female")):
            folder = root / occupation.replace(" ", "_") / gender
            folder.mkdir(parents=True)
            for i in range(3):
                image = Image.new("RGB", (32 + 4 * i, 32), (40 * o % 255, 120 * g, 60 * i))
                image.putpixel((i, g), (255, 255, 255))
                image.save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def vlm_dirs(tmp_path_factory):
    bpe = _bpe()
    return {family: save_tiny_vlm(family, tmp_path_factory.mktemp(family), bpe=bpe) for family in VLM_FAMILIES}


def test_image_benchmark_splits_and_counterbalance(image_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("DSO_CACHE", str(tmp_path))  # composites are cached there
    splits = build(modality="image", image_dir=str(image_dir), n_train=24, n_train_unambiguous=12,
                   test_pairs_per_occupation=1, val_pairs_per_occupation=1)  # fmt: skip
    test = splits["test"].to_list()
    assert {item["cluster"] for item in test} == {"nurse", "carpenter", "secretary", "mechanic"}
    assert {item["cluster"] for item in splits["heldout_occupations"]} == {"librarian"}
    # 1 person pair x 3 question types x (1 ambiguous + 2 unambiguous) x 2 orders per occupation
    assert len(test) == 4 * 3 * 3 * 2 and all(len(item["images"]) == 2 for item in test)
    by_pair: dict[str, list[dict]] = {}
    for item in test:
        by_pair.setdefault(item["pair_id"], []).append(item)
    for a, b in by_pair.values():  # the same two people, swapped left/right
        assert a["images"] == b["images"][::-1] and a["option_groups"] == b["option_groups"][::-1]
        assert a["options"] == [" A", " B"] and a["pro_option"] == 1 - b["pro_option"]
    nurse = next(i for i in test if i["cluster"] == "nurse" and i["ambiguous"])
    assert nurse["option_groups"][nurse["pro_option"]] == "female" and nurse["correct"] == -1
    unamb = next(i for i in test if not i["ambiguous"])
    assert unamb["option_groups"][unamb["correct"]] in ("male", "female")
    used = {split: {path for item in splits[split] for path in item["images"]} for split in ("train", "val", "test")}
    assert not used["train"] & used["test"] and not used["val"] & used["test"]  # no person in two splits
    composite = build(modality="image", image_dir=str(image_dir), image_layout="side_by_side", n_train=24,
                      n_train_unambiguous=12, test_pairs_per_occupation=1, val_pairs_per_occupation=1)  # fmt: skip
    item = composite["test"][0]
    assert len(item["images"]) == 1 and "on the left" in item["prompt"]
    with Image.open(item["images"][0]) as image:
        assert image.height == 448 and image.width > 2 * 448


@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_vlm_train_sweep_report_through_the_cli(family, vlm_dirs, image_dir, tmp_path):
    run_dir = tmp_path / "run"
    common = [f"bias.image_dir={image_dir}", *VLM_SMALL]
    result = dso("train", "model=hf", f"model.name_or_path={vlm_dirs[family]}", f"run_dir={run_dir}", *common)
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((run_dir / "artifact/manifest.json").read_text())
    assert manifest["model"]["family"] == family
    assert manifest["modules"] and all(name.startswith("model.language_model.") for name in manifest["modules"])
    result = dso("sweep", "alpha=[0,1]", f"run_dir={run_dir}", "sweep.bootstrap_reps=20")
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = pd.read_csv(run_dir / "sweep.csv")
    assert sweep["alpha"].tolist() == [0.0, 1.0] and sweep.loc[0, "kl"] == 0.0
    assert sweep["pob"].between(0, 1).all() and sweep.loc[1, "kl"] > -1e-6  # a tiny random VLM barely moves
    trained = Artifact.load(run_dir / "artifact")
    assert all(tensor.abs().max() > 0 for tensor in trained.tensors.values())  # every norm was trained
    assert sweep["n_ambiguous"].tolist() == [24, 24]  # 4 occupations x 3 questions x 2 orders
    result = dso("report", f"run_dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (run_dir / "report/pareto.png").stat().st_size > 0


def test_artifact_round_trip_on_a_vlm(vlm_dirs, image_dir, tmp_path, monkeypatch):
    from dso_cli.models.loading import load_model
    from dso_cli.scoring import OptionScorer

    run_dir = tmp_path / "run"
    common = [f"bias.image_dir={image_dir}", "bias.image_layout=side_by_side", *VLM_SMALL]
    monkeypatch.setenv("DSO_CACHE", str(tmp_path / "cache"))  # composites are cached there
    result = dso("train", "model=hf", f"model.name_or_path={vlm_dirs['qwen2_5_vl']}", f"run_dir={run_dir}", *common)
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = load_model(str(vlm_dirs["qwen2_5_vl"]), device="cpu", dtype="float32")
    artifact = Artifact.load(run_dir / "artifact", loaded.describe())
    splits = build(modality="image", image_dir=str(image_dir), image_layout="side_by_side", n_train=24,
                   n_train_unambiguous=12, test_pairs_per_occupation=1, val_pairs_per_occupation=1)  # fmt: skip
    items = splits["test"].to_list()[:6]
    scorer = OptionScorer(loaded.model, loaded.tokenizer, processor=loaded.processor)
    base = scorer.logprobs(items)
    with artifact.apply(loaded.model, 0.0):
        assert torch.equal(scorer.logprobs(items), base)
    with artifact.apply(loaded.model, 1.0):
        steered = scorer.logprobs(items)
    artifact.save(tmp_path / "copy")
    with Artifact.load(tmp_path / "copy", loaded.describe()).apply(loaded.model, 1.0):
        assert torch.equal(scorer.logprobs(items), steered)


@pytest.mark.parametrize("method", ["prompting", "caa", "iti", "mean_match", "leace"])
def test_baselines_fit_and_sweep_on_a_vlm(method, vlm_dirs, image_dir, tmp_path):
    run_dir = tmp_path / method
    result = dso("train", f"steering_method={method}", "model=hf", f"model.name_or_path={vlm_dirs['mllama']}",
                 f"run_dir={run_dir}", f"bias.image_dir={image_dir}", *VLM_SMALL)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((run_dir / "artifact/manifest.json").read_text())
    if method != "prompting":  # an instruction, no tensors on modules
        assert all(name.startswith("model.language_model.") for name in manifest["modules"])
    result = dso("sweep", "alpha=[0,1]", f"run_dir={run_dir}", "sweep.bootstrap_reps=20")
    assert result.returncode == 0, result.stderr[-3000:]
    assert pd.read_csv(run_dir / "sweep.csv")["alpha"].tolist() == [0.0, 1.0]
