"""Model loading by local path (the hub code path, offline), device/dtype choices and clear errors."""

import pytest
import torch

from dso_cli.errors import DsoError
from dso_cli.models import packaged
from dso_cli.models.loading import load_model, resolve_device, resolve_dtype


def test_local_checkpoint_loads_frozen_in_eval_mode(tiny_llama_dir):
    loaded = load_model(str(tiny_llama_dir), device="cpu", dtype="float32")
    assert loaded.family == "llama" and loaded.dtype == torch.float32
    assert not loaded.model.training
    assert not any(p.requires_grad for p in loaded.model.parameters())
    assert loaded.describe()["fingerprint"] == loaded.fingerprint
    again = load_model(str(tiny_llama_dir), device="cpu")
    assert again.fingerprint == loaded.fingerprint


def test_bfloat16_load_keeps_the_fingerprint(tiny_llama_dir):
    fp32 = load_model(str(tiny_llama_dir), device="cpu", dtype="float32")
    bf16 = load_model(str(tiny_llama_dir), device="cpu", dtype="bfloat16")
    assert next(bf16.model.parameters()).dtype == torch.bfloat16
    assert bf16.fingerprint == fp32.fingerprint


def test_missing_path_and_unknown_hub_id_fail_in_one_line(tmp_path):
    with pytest.raises(DsoError, match="does not exist"):
        load_model(str(tmp_path / "nope"))
    with pytest.raises(DsoError, match="cannot load model 'no-such-org/no-such-model'") as info:
        load_model("no-such-org/no-such-model")  # HF_HUB_OFFLINE=1 in tests: fails fast, no network
    assert "\n" not in str(info.value)


def test_device_and_dtype_resolution():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    with pytest.raises(DsoError, match=r"model\.dtype"):
        resolve_dtype("float8", torch.device("cpu"))
    if not torch.cuda.is_available():
        with pytest.raises(DsoError, match="no CUDA device"):
            resolve_device("cuda")


def test_packaged_scheme_errors():
    with pytest.raises(DsoError, match="expected packaged://"):
        packaged.parse("packaged://only_package")
    with pytest.raises(DsoError, match="needs the wheel"):
        packaged.gguf_path("no_such_package_here", "x.gguf")
