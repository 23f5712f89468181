"""Artifacts: save -> load -> identical outputs; a different model or a missing artifact fails clearly."""

import json

import pytest
import torch

from dso_cli.errors import DsoError
from dso_cli.models.fingerprint import model_fingerprint
from dso_cli.models.layouts import find_norm_modules
from dso_cli.steering.affine import init_affine_params
from dso_cli.steering.artifact import Artifact
from tests.conftest import build_tiny_model


def make_artifact(model) -> Artifact:
    params = init_affine_params(find_norm_modules(model))
    torch.manual_seed(0)
    with torch.no_grad():
        for p in params.values():
            p.normal_(0, 0.3)
    info = {"name_or_path": "tiny", "fingerprint": model_fingerprint(model)}
    return Artifact.create("dso", params, model=info, hyperparameters={"lr": 0.1}, strength={"trained_at": 1.0})


def test_round_trip_gives_identical_outputs(tmp_path, tokenizer):
    model = build_tiny_model("llama", tokenizer)
    artifact = make_artifact(model)
    artifact.save(tmp_path / "artifact")
    loaded = Artifact.load(tmp_path / "artifact", {"fingerprint": model_fingerprint(model)})
    ids = torch.tensor([[3, 14, 15, 92, 65]])
    with artifact.apply(model, 0.7):
        before = model(ids).logits
    with loaded.apply(model, 0.7):
        after = model(ids).logits
    assert torch.equal(before, after)
    manifest = json.loads((tmp_path / "artifact" / "manifest.json").read_text())
    for key in ("format_version", "method", "hyperparameters", "modules", "model", "strength", "created",
                "dso_version", "git_commit", "train_metrics"):  # fmt: skip
        assert key in manifest
    assert manifest["modules"]["model.norm"] == [32]


def test_loading_onto_another_model_fails(tmp_path, tokenizer):
    artifact = make_artifact(build_tiny_model("llama", tokenizer, seed=0))
    artifact.save(tmp_path / "a")
    other = build_tiny_model("llama", tokenizer, seed=1)
    with pytest.raises(DsoError, match="fitted on tiny"):
        Artifact.load(tmp_path / "a", {"name_or_path": "other", "fingerprint": model_fingerprint(other)})


def test_missing_or_broken_artifact(tmp_path):
    with pytest.raises(DsoError, match="no steering artifact"):
        Artifact.load(tmp_path)
    (tmp_path / "manifest.json").write_text("{")
    (tmp_path / "tensors.safetensors").write_bytes(b"")
    with pytest.raises(DsoError, match="not valid JSON"):
        Artifact.load(tmp_path)


def test_a_changed_or_swapped_tensors_file_is_refused(tmp_path, tokenizer):
    model = build_tiny_model("llama", tokenizer)
    make_artifact(model).save(tmp_path / "a")
    tensors = tmp_path / "a" / "tensors.safetensors"
    intact = tensors.read_bytes()
    flipped = bytearray(intact)
    flipped[-1] ^= 1  # one bit of the last tensor value: still a valid safetensors file
    tensors.write_bytes(bytes(flipped))
    with pytest.raises(DsoError, match="does not match its manifest's sha256"):
        Artifact.load(tmp_path / "a")
    # a tensors file of another artifact (another method), in a manifest with no recorded sha256
    other = Artifact.create("mean_match", {}, model={"fingerprint": "x"}, hyperparameters={}, strength={})
    other.save(tmp_path / "b")
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    del manifest["tensors_sha256"]
    (tmp_path / "a" / "manifest.json").write_text(json.dumps(manifest))
    tensors.write_bytes((tmp_path / "b" / "tensors.safetensors").read_bytes())
    with pytest.raises(DsoError, match=r"belongs to another artifact .*dso_method mean_match"):
        Artifact.load(tmp_path / "a")
    tensors.write_bytes(intact)
    assert Artifact.load(tmp_path / "a").tensors.keys() == make_artifact(model).tensors.keys()


def test_fingerprint_ignores_dtype_but_not_weights(tokenizer):
    model = build_tiny_model("llama", tokenizer)
    assert model_fingerprint(model) == model_fingerprint(build_tiny_model("llama", tokenizer).to(torch.bfloat16))
    assert model_fingerprint(model) != model_fingerprint(build_tiny_model("llama", tokenizer, seed=5))


def test_atomic_writes_leave_ordinary_file_permissions(tmp_path):
    import os
    import stat

    from dso_cli.io import write_text

    mask = os.umask(0o022)
    try:
        path = write_text(tmp_path / "result.txt", "x")
        assert stat.S_IMODE(path.stat().st_mode) == 0o644 and path.read_text() == "x"
        assert [p.name for p in tmp_path.iterdir()] == ["result.txt"]  # no temporary file left behind
    finally:
        os.umask(mask)


def test_a_damaged_artifact_fails_at_load_and_a_misfit_before_any_row(tmp_path, tokenizer):
    model = build_tiny_model("llama", tokenizer)
    artifact = make_artifact(model)
    name = next(iter(artifact.manifest["modules"]))
    missing_b = {k: v for k, v in artifact.tensors.items() if k != f"{name}.b"}
    Artifact("dso", missing_b, dict(artifact.manifest)).save(tmp_path / "no_b")
    with pytest.raises(DsoError, match=rf"no {name}\.b tensor"):
        Artifact.load(tmp_path / "no_b")
    extra = dict(artifact.manifest, modules={**artifact.manifest["modules"], "model.ghost": [32]})
    Artifact("dso", artifact.tensors, extra).save(tmp_path / "ghost")
    with pytest.raises(DsoError, match=r"modules and the tensors disagree \(module 'model\.ghost'"):
        Artifact.load(tmp_path / "ghost")
    artifact.check_fits(model)  # its own model: fits
    modules = {f"x{m}": s for m, s in artifact.manifest["modules"].items()}
    tensors = {f"x{k}": v for k, v in artifact.tensors.items()}
    renamed = Artifact("dso", tensors, dict(artifact.manifest, modules=modules))
    with pytest.raises(DsoError, match="the model has no module 'xmodel"):
        renamed.check_fits(model)
    wide = {k: torch.zeros(64) for k in artifact.tensors}
    wider = Artifact("dso", wide, dict(artifact.manifest, modules={m: [64] for m in artifact.manifest["modules"]}))
    with pytest.raises(DsoError, match="has width 32, this artifact steers 64"):
        wider.check_fits(model)
