"""dso export: an affine artifact folded into the norms gives a plain checkpoint with the steered logits."""

import ast
import copy
import json
import shutil

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from torch import nn
from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoTokenizer, LlamaConfig

from dso_cli.errors import DsoError
from dso_cli.models.layouts import find_norm_modules
from dso_cli.models.remote_code import BIAS_MODULES_KEY, MODELING_FILE, RECORD_KEY
from dso_cli.scoring import OptionScorer
from dso_cli.steering import export as export_module
from dso_cli.steering.affine import apply_affine
from dso_cli.steering.artifact import Artifact
from dso_cli.steering.export import export_checkpoint
from dso_cli.steering.export_folding import fold_norms, weight_convention
from dso_cli.steering.export_stock import plan_shifts
from tests.cli_runner import SMALL, assert_bad_input, dso
from tests.conftest import build_tiny_model
from tests.vlm_fixtures import build_tiny_vlm

TEXTS = [
    "Who was the doctor? Answer:",
    "The nurse and the mechanic talked about the weather for a long time.",
    "A B",
]


def random_tensors(model: nn.Module, seed: int = 0, shift: float = 0.3) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, size in find_norm_modules(model).items():
        tensors[f"{name}.a"] = torch.randn(size, generator=generator) * 0.3
        tensors[f"{name}.b"] = torch.randn(size, generator=generator) * shift
    return tensors


def batches(tokenizer) -> list[dict[str, torch.Tensor]]:
    """Padded batches (right and left padding) and a single sequence."""
    side, out = tokenizer.padding_side, []
    try:
        for tokenizer.padding_side in ("right", "left"):
            out.append(dict(tokenizer(TEXTS, return_tensors="pt", padding=True)))
    finally:
        tokenizer.padding_side = side
    out.append(dict(tokenizer(TEXTS[:1], return_tensors="pt")))
    return out


def logits(model: nn.Module, batch: dict, tensors=None, alpha: float = 0.0) -> torch.Tensor:
    """Logits at the attended positions, with ``tensors`` hooked at ``alpha`` when given."""
    with torch.no_grad(), apply_affine(model, tensors or {}, alpha):
        out = model(**batch).logits
    return out[batch["attention_mask"].bool()]


def export(model, tokenizer, tensors, alpha, out, **kwargs):
    """Export a copy (the fold is in place) and load the result with the plain Auto class."""
    result = export_checkpoint(copy.deepcopy(model), tokenizer, tensors, alpha, out, **kwargs)
    loaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, trust_remote_code=result.remote_code)
    return result, loaded.eval(), json.loads((out / "config.json").read_text())


def hooked_modules(model: nn.Module) -> list[str]:
    return [name for name, module in model.named_modules() if module._forward_hooks or module._forward_pre_hooks]


def imports_of(path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    return names | {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}


@pytest.mark.parametrize("family", ["llama", "gemma3_text", "qwen2", "gpt2"])
def test_exported_checkpoint_gives_the_steered_logits(family, tokenizer, tmp_path):
    base = build_tiny_model(family, tokenizer)
    tensors = random_tensors(base)
    norms = list(find_norm_modules(base))
    result, loaded, config = export(base, tokenizer, tensors, 0.8, tmp_path / "out")
    convention = "offset" if family.startswith("gemma") else "scale"  # Gemma's RMSNorm computes (1 + w) * n(x)
    assert result.conventions == {convention: len(norms)}
    unplaced = plan_shifts(base, norms).unplaced
    if family == "gpt2":  # LayerNorm has a bias of its own: a stock checkpoint
        assert not result.remote_code and result.native_bias == len(norms) and unplaced == []
        assert "auto_map" not in config and not (tmp_path / "out" / MODELING_FILE).exists()
        assert type(loaded) is type(base)
    else:  # RMSNorm: a shift the q/k/v or gate/up biases cannot take needs the modeling file's added bias
        assert result.bias_modules == unplaced and config[BIAS_MODULES_KEY] == unplaced
        assert result.shifts_in_linears == len(norms) - len(unplaced) > 0
        class_name = f"DsoExport{type(base).__name__}"
        assert config["auto_map"] == {"AutoModelForCausalLM": f"modeling_dso_export.{class_name}"}
        assert config["architectures"] == [class_name] and config["model_type"] == base.config.model_type
        assert type(loaded).__name__ == class_name and isinstance(loaded, type(base))
        assert imports_of(tmp_path / "out" / MODELING_FILE) == {"torch", "transformers"}
    assert hooked_modules(loaded) == result.bias_modules  # no steering hooks, only the added biases' own
    tied = base.get_output_embeddings().weight is base.get_input_embeddings().weight
    assert (loaded.get_output_embeddings().weight is loaded.get_input_embeddings().weight) == tied
    for batch in batches(tokenizer):
        expected = logits(base, batch, tensors, 0.8)
        torch.testing.assert_close(logits(loaded, batch), expected, atol=1e-4, rtol=0)
        assert (expected - logits(base, batch)).abs().max() > 1e-2  # the transform does change the model
    record = config[RECORD_KEY]
    assert record["alpha"] == 0.8 and record["norms"] == len(norms)
    assert record["verified"]["max_abs_logit_diff"] == result.max_logit_diff <= 1e-4


@pytest.mark.parametrize(
    ("family", "flags", "unplaced"),
    [
        ("llama", ["attention_bias", "mlp_bias"], ["model.norm"]),  # the final norm feeds the tied, unbiased head
        ("qwen2", [], ["post_attention_layernorm", "model.norm"]),  # q/k/v are biased already; the MLP cannot be
        ("gemma3_text", ["attention_bias"], ["post_attention_layernorm", "pre_feedforward_layernorm"]),
        ("gpt2", [], []),
    ],
)
def test_shifts_move_into_the_biases_of_the_linears_that_read_the_norm(family, flags, unplaced, tokenizer, tmp_path):
    base = build_tiny_model(family, tokenizer)
    norms = list(find_norm_modules(base))
    plan = plan_shifts(base, norms)
    assert sorted(plan.flags) == flags
    assert all(any(name.endswith(u) for name in plan.unplaced) for u in unplaced)
    if family == "llama":
        assert plan.unplaced == ["model.norm"]
        assert plan.consumers["model.layers.0.input_layernorm"] == [f"model.layers.0.self_attn.{p}_proj" for p in "qkv"]
        assert plan.consumers["model.layers.0.post_attention_layernorm"] == ["model.layers.0.mlp.gate_proj",
                                                                             "model.layers.0.mlp.up_proj"]  # fmt: skip
    tensors = random_tensors(base)
    for name in plan.unplaced:  # what steering_method.stock_export=true trains: no shift where none fits
        tensors[f"{name}.b"].zero_()
    result, loaded, config = export(base, tokenizer, tensors, 1.0, tmp_path / "out")
    assert not result.remote_code and "auto_map" not in config and not (tmp_path / "out" / MODELING_FILE).exists()
    assert type(loaded) is type(base) and hooked_modules(loaded) == []
    assert all(config[flag] is True for flag in flags) and result.config_flags == flags
    for batch in batches(tokenizer):
        expected = logits(base, batch, tensors, 1.0)
        torch.testing.assert_close(logits(loaded, batch), expected, atol=1e-4, rtol=0)
        assert (expected - logits(base, batch)).abs().max() > 1e-2


@pytest.mark.parametrize("family", ["llama", "gemma3_text"])
def test_without_a_shift_the_checkpoint_is_a_stock_one(family, tokenizer, tmp_path):
    base = build_tiny_model(family, tokenizer)
    tensors = random_tensors(base, shift=0.0)
    result, loaded, config = export(base, tokenizer, tensors, 1.0, tmp_path / "out")
    assert not result.remote_code and result.bias_modules == []
    assert "auto_map" not in config and BIAS_MODULES_KEY not in config
    assert config["architectures"] == [type(base).__name__] and not (tmp_path / "out" / MODELING_FILE).exists()
    assert type(loaded) is type(base) and hooked_modules(loaded) == []
    for batch in batches(tokenizer):
        torch.testing.assert_close(logits(loaded, batch), logits(base, batch, tensors, 1.0), atol=1e-4, rtol=0)


def test_strength_zero_is_the_base_model_exactly(tokenizer, tmp_path):
    base = build_tiny_model("gemma3_text", tokenizer)
    result, loaded, config = export(base, tokenizer, random_tensors(base), 0.0, tmp_path / "out")
    assert not result.remote_code and "auto_map" not in config
    expected = base.state_dict()
    assert all(torch.equal(value, expected[key]) for key, value in loaded.state_dict().items())
    for batch in batches(tokenizer):
        assert torch.equal(logits(loaded, batch), logits(base, batch))


def test_remote_code_leaves_the_stock_class_registered(tokenizer, tiny_llama_dir, tmp_path):
    base = build_tiny_model("llama", tokenizer)
    tensors = random_tensors(base)
    _, loaded, _ = export(base, tokenizer, tensors, 1.0, tmp_path / "out")
    assert type(loaded).__name__ == "DsoExportLlamaForCausalLM"
    # llama is a registered model type: loading the subclass must not reroute stock llama checkpoints
    assert type(AutoModelForCausalLM.from_pretrained(tiny_llama_dir)).__name__ == "LlamaForCausalLM"
    assert type(AutoModelForCausalLM.from_config(LlamaConfig(**base.config.to_dict()))).__name__ == "LlamaForCausalLM"
    # the loaded subclass saves itself with its modeling file, and loads back the same
    loaded.save_pretrained(tmp_path / "again")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "again", dtype=torch.float32, trust_remote_code=True)
    assert (tmp_path / "again" / MODELING_FILE).is_file()
    batch = batches(tokenizer)[0]
    torch.testing.assert_close(logits(again, batch), logits(base, batch, tensors, 1.0), atol=1e-4, rtol=0)


def test_a_checkpoint_that_does_not_reproduce_the_steering_is_never_written(tokenizer, tmp_path, monkeypatch):
    base = build_tiny_model("llama", tokenizer)
    monkeypatch.setattr(export_module, "write_folds", lambda model, folds: [])  # the folds never reach the weights
    with pytest.raises(DsoError, match="nothing was written"):
        export_checkpoint(base, tokenizer, random_tensors(base), 1.0, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []  # neither out nor a temporary directory


def test_weight_conventions_are_measured_and_unfoldable_modules_refused():
    from transformers.models.gemma3.modeling_gemma3 import Gemma3RMSNorm
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    norms = {"scale": [LlamaRMSNorm(8), nn.LayerNorm(8)], "offset": [Gemma3RMSNorm(8)]}
    for convention, modules in norms.items():
        for module in modules:
            with torch.no_grad():
                module.weight.normal_()
            before = module.weight.clone()
            assert weight_convention(module, "norm") == convention
            assert torch.equal(module.weight, before)  # measured without changing it

    class Shifted(nn.Module):  # (2 + w) * x: neither convention
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.zeros(8))

        def forward(self, x):
            return (2 + self.weight) * x

    with pytest.raises(DsoError, match="neither"):
        weight_convention(Shifted(), "norm")
    model = nn.ModuleDict({"plain": nn.LayerNorm(8, elementwise_affine=False), "nobias": nn.LayerNorm(8, bias=False)})
    for name, match in (("plain", "has no weight"), ("nobias", "without its bias")):
        with pytest.raises(DsoError, match=match):
            fold_norms(model, {f"{name}.a": torch.zeros(8), f"{name}.b": torch.ones(8)}, 1.0)


def test_out_directory_is_never_clobbered(tokenizer, tmp_path):
    base = build_tiny_model("llama", tokenizer)
    tensors = random_tensors(base)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("keep me")
    with pytest.raises(DsoError, match="is not empty"):
        export_checkpoint(base, tokenizer, tensors, 1.0, tmp_path / "busy")
    with pytest.raises(DsoError, match="holds no earlier dso export"):
        export_checkpoint(base, tokenizer, tensors, 1.0, tmp_path / "busy", overwrite=True)
    (tmp_path / "file").write_text("")
    with pytest.raises(DsoError, match="is a file"):
        export_checkpoint(base, tokenizer, tensors, 1.0, tmp_path / "file")
    (tmp_path / "out").mkdir()  # an empty directory is fine, and an earlier export is replaced with overwrite
    export_checkpoint(copy.deepcopy(base), tokenizer, tensors, 1.0, tmp_path / "out")
    export_checkpoint(copy.deepcopy(base), tokenizer, tensors, 0.5, tmp_path / "out", overwrite=True)
    assert json.loads((tmp_path / "out" / "config.json").read_text())[RECORD_KEY]["alpha"] == 0.5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy", "file", "out"]  # no leftovers


def test_vision_language_model_export_round_trip(tmp_path):
    """Gemma-3 (a (1 + w) norm) with images: the vision tower and projector are left as they were."""
    base, processor = build_tiny_vlm("gemma3")
    tensors = random_tensors(base)
    result = export_checkpoint(copy.deepcopy(base), processor.tokenizer, tensors, 1.0, tmp_path / "out",
                               processor=processor)  # fmt: skip
    assert result.auto_class == "AutoModelForImageTextToText" and result.conventions == {"offset": len(tensors) // 2}
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path / "out", dtype=torch.float32, trust_remote_code=True)
    assert type(loaded).__name__ == "DsoExportGemma3ForConditionalGeneration"
    images = []
    for i, color in enumerate([(220, 30, 30), (30, 200, 40)]):
        image = Image.new("RGB", (28, 28), color)
        image.putpixel((i, 3), (0, 0, 0))
        images.append(str(tmp_path / f"{i}.png"))
        image.save(images[-1])
    question = "Which of these two people is the doctor? Answer with A or B."
    items = [{"id": str(i), "prompt": question, "answer_prefix": "Answer:", "options": [" A", " B"],
              "images": pair} for i, pair in enumerate([images, images[::-1]])]  # fmt: skip
    with apply_affine(base, tensors, 1.0):
        expected = OptionScorer(base, processor.tokenizer, processor=processor).logprobs(items)
    got = OptionScorer(loaded, processor.tokenizer, processor=processor).logprobs(items)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    saved = AutoTokenizer.from_pretrained(tmp_path / "out")
    assert saved(TEXTS[1])["input_ids"] == processor.tokenizer(TEXTS[1])["input_ids"]
    assert (tmp_path / "out" / "processor_config.json").is_file()


@pytest.fixture(scope="module")
def trained_run(tiny_llama_dir, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "dso"
    # every norm, the last included: a shift after the final layer is what needs the exported modeling file
    result = dso("train", "model=hf", f"model.name_or_path={tiny_llama_dir}", f"run_dir={run_dir}",
                 "train.eval_val=false", "steering_method.depth=[0,1]", *SMALL)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


def test_cli_exports_a_trained_run_and_refuses_bad_input(trained_run, tiny_llama_dir, tokenizer, tmp_path):
    out = tmp_path / "exported"
    result = dso("export", f"run_dir={trained_run}", f"out={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "verified max |Δlogits|" in result.stdout and f"saved {out}" in result.stdout
    artifact = Artifact.load(trained_run / "artifact")
    record = json.loads((out / "config.json").read_text())[RECORD_KEY]
    assert record["method"] == "dso" and record["alpha"] == 1.0  # the trained strength by default
    assert record["run_dir"] == trained_run.name and len(record["artifact_sha256"]) == 16
    for name in ("config.json", "dso_export.yaml", "dso_export_env.json"):  # no path of this machine travels
        assert str(tmp_path) not in (out / name).read_text(), name
    assert record["model_fingerprint"] == artifact.manifest["model"]["fingerprint"] and record["dso_version"]
    saved = OmegaConf.load(out / "dso_export.yaml")
    assert saved.verb == "export" and saved.alpha == 1.0 and saved.model.dtype == "float32"
    loaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, trust_remote_code=True)
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    for batch in batches(AutoTokenizer.from_pretrained(out)):
        with artifact.apply(base, 1.0):
            expected = logits(base, batch)
        torch.testing.assert_close(logits(loaded, batch), expected, atol=1e-4, rtol=0)

    # the modeling file runs when the checkpoint loads: dso refuses a copy changed after export
    from dso_cli.models.loading import load_model
    from dso_cli.models.remote_code import MODELING_SHA_KEY

    assert len(record[MODELING_SHA_KEY]) == 64
    assert load_model(str(out), trust_remote_code=True).fingerprint  # as exported: loads
    tampered = tmp_path / "tampered"
    shutil.copytree(out, tampered)
    (tampered / MODELING_FILE).write_text((out / MODELING_FILE).read_text() + "\nimport os  # added later\n")
    with pytest.raises(DsoError, match="is not the modeling file dso exported"):
        load_model(str(tampered), trust_remote_code=True)

    assert_bad_input(dso("export", f"run_dir={trained_run}", f"out={out}"), "is not empty")
    assert_bad_input(dso("export", f"run_dir={trained_run}"), "out must be set")
    assert_bad_input(dso("export", f"run_dir={trained_run}", f"out={tmp_path / 'x'}", "alpha=[0,1]"), "one strength")
    caa_run = tmp_path / "caa"
    shutil.copytree(trained_run, caa_run)
    Artifact("caa", artifact.tensors, {**artifact.manifest, "method": "caa"}).save(caa_run / "artifact")
    assert_bad_input(dso("export", f"run_dir={caa_run}", f"out={tmp_path / 'y'}"), "holds a caa artifact")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_stock_export_option_trains_no_shift_where_none_fits_and_exports_stock(tiny_llama_dir, tmp_path):
    run_dir = tmp_path / "stock"
    trained = dso("train", "model=hf", f"model.name_or_path={tiny_llama_dir}", f"run_dir={run_dir}",
                  "train.eval_val=false", "steering_method.stock_export=true",
                  "steering_method.depth=[0,1]", *SMALL)  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-3000:]
    artifact = Artifact.load(run_dir / "artifact")
    assert artifact.manifest["hyperparameters"]["shift_frozen"] == ["model.norm"]
    assert not artifact.tensors["model.norm.b"].any() and artifact.tensors["model.norm.a"].any()
    assert artifact.tensors["model.layers.0.input_layernorm.b"].any()  # the other shifts train as before
    out = tmp_path / "exported"
    result = dso("export", f"run_dir={run_dir}", f"out={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "need the modeling file" not in result.stdout and "attention_bias=true" in result.stdout
    config = json.loads((out / "config.json").read_text())
    assert "auto_map" not in config and not (out / MODELING_FILE).exists()
    loaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)  # no remote code
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    for batch in batches(AutoTokenizer.from_pretrained(out)):
        with artifact.apply(base, 1.0):
            expected = logits(base, batch)
        torch.testing.assert_close(logits(loaded, batch), expected, atol=1e-4, rtol=0)
