"""Folding an affine steering artifact into a model's norms and saving it as a plain Hugging Face checkpoint.

A hooked norm outputs ``y = N(x)``; steered at strength ω it outputs ``y + ω(a⊙y + b) = (1 + ωa)⊙y + ωb``.

- The multiplicative part goes into the norm's weight. Where the weight sits differs between families
  (``y = w⊙n(x)`` for LayerNorm and the Llama/Qwen RMSNorm, ``y = (1 + w)⊙n(x)`` for Gemma's), so the
  convention is measured on each module rather than guessed from its class name.
- The additive part goes into the norm's own bias where it has one (LayerNorm), else into the biases
  of the linear layers that read the norm (q/k/v, gate/up; a config flag such as ``attention_bias``
  or ``mlp_bias`` gives them one, see :mod:`dso_cli.steering.export_stock`). A norm whose shift fits
  neither (a final norm before an unbiased output head) gets an added ``bias`` parameter from a small
  modeling file saved beside the weights (``auto_map`` in ``config.json``; load with
  ``trust_remote_code=True``). When every ``ωb`` lands in a bias or is zero, the checkpoint is a stock
  one of the same ``model_type``, loaded with plain ``from_pretrained``.

Nothing is published unless the saved checkpoint, loaded back through the Auto classes, reproduces the
steered model on a probe (logits and every folded norm's output) within a tolerance; the directory then
appears in one rename, so ``out`` is either untouched or complete.
"""

from __future__ import annotations

import gc
import os
import shutil
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from dso_cli.errors import DsoError, first_line
from dso_cli.io import sha256_of, write_json, write_text
from dso_cli.models.remote_code import BIAS_MODULES_KEY, MODELING_FILE, MODELING_SHA_KEY, RECORD_KEY, read_json
from dso_cli.steering.affine import apply_affine, module_names
from dso_cli.steering.export_folding import (
    _run_norm,
    fold_norms,
    write_folds,
)
from dso_cli.steering.export_modeling import _forget_module_copy, auto_class_name, modeling_source
from dso_cli.steering.export_stock import ShiftPlan, plan_shifts, write_shifts

TOLERANCE = 1e-4
PROBE_TEXTS = (
    "The doctor and the nurse were talking in the hallway. Who was the doctor?",
    "Answer with A or B.",
    "One, two, three: the exported model should give the steered model's logits.",
)


@dataclass
class Probe:
    """What the steered model computes on a fixed input, which the saved checkpoint must reproduce."""

    inputs: list[dict[str, Tensor]]
    logits: list[Tensor]  # per input: the logits at attended positions
    norm_inputs: dict[str, Tensor] = field(default_factory=dict)
    norm_outputs: dict[str, Tensor] = field(default_factory=dict)

    @property
    def n_tokens(self) -> int:
        return sum(int(batch["attention_mask"].sum()) for batch in self.inputs)


def steered_probe(
    model: nn.Module, tokenizer: Any, tensors: Mapping[str, Tensor], strength: float, texts: Sequence[str] = PROBE_TEXTS
) -> Probe:
    """Logits of the hooked model on ``texts`` (one padded batch, or one by one without a pad token) and
    the output of each hooked norm on a random input: the latter covers norms the text does not reach
    (Mllama's cross-attention layers run only with an image)."""
    if tokenizer.pad_token is not None:
        batches = [tokenizer(list(texts), return_tensors="pt", padding=True)]
    else:
        batches = [tokenizer([text], return_tensors="pt") for text in texts]
    inputs = [{"input_ids": b["input_ids"], "attention_mask": b["attention_mask"]} for b in batches]
    device = model.get_input_embeddings().weight.device
    steering = {k: v.to(device) for k, v in tensors.items()}
    modules = dict(model.named_modules())
    generator = torch.Generator().manual_seed(0)
    norm_inputs = {name: torch.randn(2, 3, tensors[f"{name}.a"].numel(), generator=generator) * 2 + 0.5
                   for name in module_names(tensors)}  # fmt: skip
    with torch.no_grad(), apply_affine(model, steering, strength):
        logits = [_logits(model, batch) for batch in inputs]
        outputs = {name: _run_norm(modules[name], x) for name, x in norm_inputs.items()}
    return Probe(inputs, logits, norm_inputs, outputs)


def probe_differences(model: nn.Module, probe: Probe) -> tuple[float, float]:
    """Max |Δlogits| and max |Δ norm output| of ``model`` (unhooked) against the steered probe."""
    modules = dict(model.named_modules())
    with torch.no_grad():
        logits = [_logits(model, batch) for batch in probe.inputs]
        outputs = {name: _run_norm(modules[name], x) for name, x in probe.norm_inputs.items()}
    logit_diff = max(float((got - ref).abs().max()) for got, ref in zip(logits, probe.logits, strict=True))
    norm_diff = max((float((outputs[n] - ref).abs().max()) for n, ref in probe.norm_outputs.items()), default=0.0)
    return logit_diff, norm_diff


@dataclass(frozen=True)
class ExportResult:
    path: Path
    auto_class: str
    max_logit_diff: float
    max_norm_diff: float
    probe_tokens: int
    conventions: dict[str, int]  # convention -> number of norms
    native_bias: int  # norms whose own bias absorbed ωb
    bias_modules: list[str]  # norms given an added bias through the modeling file
    shifts_in_linears: int = 0  # norms whose shift went into the biases of the linears reading them
    config_flags: list[str] = field(default_factory=list)  # config flags turned on for those biases

    @property
    def remote_code(self) -> bool:
        return bool(self.bias_modules)

    def load_hint(self) -> str:
        remote = ", trust_remote_code=True" if self.remote_code else ""
        return f"{self.auto_class}.from_pretrained({str(self.path)!r}{remote})"


def check_out_dir(out: str | Path, overwrite: bool) -> Path:
    """``out`` must be absent or empty; with ``overwrite`` it may also hold an earlier export.

    Only an earlier export (a ``config.json`` with a ``dso_export`` record) is ever replaced, so a
    mistyped ``out`` cannot delete an unrelated directory.
    """
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise DsoError(f"out={out} is a file, not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise DsoError(f"out={out} is not empty; pass overwrite=true to replace an earlier export")
        if RECORD_KEY not in read_json(out / "config.json"):
            raise DsoError(f"out={out} is not empty and holds no earlier dso export; choose another directory")
    return out


def export_checkpoint(
    model: nn.Module,
    tokenizer: Any,
    tensors: Mapping[str, Tensor],
    strength: float,
    out: str | Path,
    *,
    processor: Any = None,
    record: Mapping[str, Any] | None = None,
    extra_files: Mapping[str, str] | None = None,
    overwrite: bool = False,
    tolerance: float = TOLERANCE,
    device_map: Any = None,
    release: Callable[[], None] | None = None,
) -> ExportResult:
    """Fold ``tensors`` at ``strength`` into ``model`` (in place), save model + tokenizer (+
    ``processor``) into ``out`` and verify the saved checkpoint before publishing it.

    ``record`` goes into ``config.json`` under ``dso_export``; ``extra_files`` (name -> text) are written
    beside the checkpoint. ``release``, when given, is called once the checkpoint is saved and must drop
    the caller's references to ``model``, so that loading the copy back does not need twice the memory.
    """
    out = check_out_dir(out, overwrite)
    strength = float(strength)
    embeddings = model.get_input_embeddings().weight
    device_map = device_map or str(embeddings.device)
    dtype, auto_class = embeddings.dtype, auto_class_name(model)
    probe = steered_probe(model, tokenizer, tensors, strength)
    folds = fold_norms(model, tensors, strength)
    shifted = [fold.name for fold in folds if fold.added_bias]
    plan = plan_shifts(model, shifted) if shifted else ShiftPlan()
    moved = {fold.name: fold.bias for fold in folds if fold.name in plan.consumers}
    folds = [replace(fold, bias=None) if fold.name in moved else fold for fold in folds]
    for name, shift in moved.items():  # the norm itself now outputs (1 + ωa)⊙y; its consumers add W·ωb
        probe.norm_outputs[name] = probe.norm_outputs[name] - shift.float().cpu()
    bias_modules = [fold.name for fold in folds if fold.added_bias]
    conventions = {c: n for c in ("scale", "offset") if (n := sum(f.convention == c for f in folds))}
    native = sum(f.native_bias for f in folds)
    summary = {"norms": len(folds), "conventions": conventions, "native_bias": native, "added_bias": len(bias_modules),
               "shift_in_linear_biases": len(moved), "config_flags": sorted(plan.flags)}  # fmt: skip
    full_record = {**(record or {}), "alpha": strength, **summary}

    out.parent.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex
    tmp = out.parent / f".{out.name}.{token}.partial"
    tmp.mkdir()
    try:
        write_folds(model, folds)
        write_shifts(model, plan, moved)
        class_name = save_folded(model, bias_modules, auto_class, full_record, tmp)
        if bias_modules:
            full_record[MODELING_SHA_KEY] = sha256_of(tmp / MODELING_FILE)
        _save_preprocessing(processor or tokenizer, tmp)
        del model, folds
        if release is not None:
            release()
            _free_memory()
        logit_diff, norm_diff = _verify(tmp, probe, auto_class, class_name, bool(bias_modules), dtype, device_map,
                                        tolerance, free=release is not None)  # fmt: skip
        verified = {"max_abs_logit_diff": logit_diff, "max_abs_norm_output_diff": norm_diff,
                    "probe_tokens": probe.n_tokens, "tolerance": tolerance, "dtype": _dtype_name(dtype)}  # fmt: skip
        _update_json(tmp / "config.json", {RECORD_KEY: {**full_record, "verified": verified}})
        for name, text in (extra_files or {}).items():
            write_text(tmp / name, text)
        _publish(tmp, out, overwrite)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        if bias_modules:
            _forget_module_copy(token)
    return ExportResult(out, auto_class, logit_diff, norm_diff, probe.n_tokens, conventions, native, bias_modules,
                        len(moved), sorted(plan.flags))  # fmt: skip


def save_folded(
    model: nn.Module, bias_modules: Sequence[str], auto_class: str, record: Mapping[str, Any], path: Path
) -> str:
    """Save a model with its folds written (:func:`write_folds`); returns the class it loads as.

    With added biases the config gains ``auto_map`` -> :data:`MODELING_FILE` and the list of those
    norms, and ``architectures`` names the subclass: the weights are only right with it.
    """
    config = model.config
    class_name = type(model).__name__
    if bias_modules:
        class_name, source = modeling_source(type(model))
        reference = f"{Path(MODELING_FILE).stem}.{class_name}"
        config.auto_map = {**(getattr(config, "auto_map", None) or {}), auto_class: reference}
        setattr(config, BIAS_MODULES_KEY, list(bias_modules))
        write_text(path / MODELING_FILE, source)
        record = {**record, MODELING_SHA_KEY: sha256_of(path / MODELING_FILE)}
    setattr(config, RECORD_KEY, dict(record))
    # Remote code is loaded without transformers' checkpoint key conversions (legacy VLM layouts), so
    # its weights are saved under the model's own module names, which the subclass loads as they are.
    model.save_pretrained(path, save_original_format=not bias_modules)
    if bias_modules:  # save_pretrained names the in-memory (stock) class
        _update_json(path / "config.json", {"architectures": [class_name]})
    return class_name


def _verify(
    path: Path, probe: Probe, auto_class: str, class_name: str, remote: bool, dtype: torch.dtype, device_map: Any,
    tolerance: float, free: bool,
) -> tuple[float, float]:  # fmt: skip
    """Load the saved checkpoint with the Auto class as a user would and compare it with the probe."""
    import transformers

    loader = getattr(transformers, auto_class)
    try:
        loaded = loader.from_pretrained(str(path), dtype=dtype, device_map=device_map, trust_remote_code=remote)
    except (OSError, ValueError, ImportError, TypeError, KeyError, RuntimeError) as exc:
        first = first_line(exc)
        raise DsoError(f"the exported checkpoint does not load back ({first}); nothing was written") from None
    loaded.eval()
    if type(loaded).__name__ != class_name:
        raise DsoError(f"the exported checkpoint loads as {type(loaded).__name__}, not {class_name}; nothing written")
    logit_diff, norm_diff = probe_differences(loaded, probe)
    del loaded
    if free:
        _free_memory()
    worst = max(logit_diff, norm_diff)
    if not worst <= tolerance:  # also catches NaN
        raise DsoError(
            f"the exported checkpoint differs from the steered model by {worst:.3g} (max |Δlogits| {logit_diff:.3g}, "
            f"norm outputs {norm_diff:.3g}) > tolerance {tolerance:g}; nothing was written (float32 rounding grows "
            "with depth: a larger tolerance= accepts it)"
        )
    return logit_diff, norm_diff


def _publish(tmp: Path, out: Path, overwrite: bool) -> None:
    """Move the finished checkpoint onto ``out`` (an earlier export there is replaced only with ``overwrite``)."""
    check_out_dir(out, overwrite)  # again: something may have appeared there meanwhile
    old = None
    if out.is_dir():
        if any(out.iterdir()):
            old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(out, old)
        else:
            out.rmdir()
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _save_preprocessing(processor: Any, path: Path) -> None:
    """Save the processor (or tokenizer); one of this package's own classes is recorded as the stock
    transformers class it derives from (the image-only Qwen2.5-VL processor as ``Qwen2_5_VLProcessor``),
    so ``AutoProcessor`` needs nothing of this package."""
    import transformers

    processor.save_pretrained(path)
    own = type(processor)
    if own.__module__.startswith("transformers."):
        return
    stock = next((c for c in own.__mro__ if getattr(transformers, c.__name__, None) is c), None)
    if stock is None:
        return
    for name in ("processor_config.json", "tokenizer_config.json", "preprocessor_config.json"):
        if read_json(path / name).get("processor_class") == own.__name__:
            _update_json(path / name, {"processor_class": stock.__name__})


def _logits(model: nn.Module, batch: Mapping[str, Tensor]) -> Tensor:
    device = model.get_input_embeddings().weight.device
    batch = {k: v.to(device) for k, v in batch.items()}
    logits = model(**batch, use_cache=False).logits
    return logits[batch["attention_mask"].bool()].float().cpu()


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _update_json(path: Path, changes: Mapping[str, Any]) -> None:
    data = read_json(path)
    data.update(changes)
    write_json(path, data)
