"""Folding an affine steering artifact into a model's norms and saving it as a plain Hugging Face checkpoint.

A hooked norm outputs ``y = N(x)``; steered at strength ω it outputs ``y + ω(a⊙y + b) = (1 + ωa)⊙y + ωb``.

- The multiplicative part goes into the norm's weight. Where the weight sits differs between families
  (``y = w⊙n(x)`` for LayerNorm and the Llama/Qwen RMSNorm, ``y = (1 + w)⊙n(x)`` for Gemma's), so the
  convention is measured on each module rather than guessed from its class name.
- The additive part goes into the norm's own bias where it has one (LayerNorm). RMSNorm has none, and
  the stock architecture cannot represent it: those norms get an added ``bias`` parameter from a small
  modeling file saved beside the weights (``auto_map`` in ``config.json``; load with
  ``trust_remote_code=True``). When every ``ωb`` lands in a native bias or is zero, the checkpoint is a
  stock one of the same ``model_type``.

Nothing is published unless the saved checkpoint, loaded back through the Auto classes, reproduces the
steered model on a probe (logits and every folded norm's output) within a tolerance; the directory then
appears in one rename, so ``out`` is either untouched or complete.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from dso_cli import __version__
from dso_cli.errors import DsoError, first_line
from dso_cli.io import sha256_of, write_json, write_text
from dso_cli.steering.affine import apply_affine, module_names

Convention = Literal["scale", "offset"]
"""``scale``: ``y = w⊙n(x) (+ β)``; ``offset``: ``y = (1 + w)⊙n(x) (+ β)``."""

MODELING_FILE = "modeling_dso_export.py"
BIAS_MODULES_KEY = "dso_norm_bias_modules"  # config.json: the norms that get an added bias
RECORD_KEY = "dso_export"  # config.json: what was folded, from where, and how well it was verified
MODELING_SHA_KEY = "modeling_sha256"  # in the record: the modeling file as exported (checked before loading it)


def check_modeling_file(path: str | Path) -> None:
    """Refuse an exported checkpoint whose modeling file is not the one dso wrote: loading it runs it
    (``trust_remote_code``), so a copy changed after export must not be executed."""
    path = Path(path).expanduser()
    record = _read_json(path / "config.json").get(RECORD_KEY)
    recorded = record.get(MODELING_SHA_KEY) if isinstance(record, dict) else None
    if recorded is None:
        return
    modeling = path / MODELING_FILE
    if not modeling.is_file() or sha256_of(modeling) != recorded:
        raise DsoError(
            f"{modeling} is not the modeling file dso exported (sha256 differs from config.json's "
            f"{RECORD_KEY}.{MODELING_SHA_KEY}); refusing to run it"
        )


TOLERANCE = 1e-4
PROBE_TEXTS = (
    "The doctor and the nurse were talking in the hallway. Who was the doctor?",
    "Answer with A or B.",
    "One, two, three: the exported model should give the steered model's logits.",
)


@dataclass(frozen=True)
class FoldedNorm:
    """The new parameters of one norm module with the transform folded in."""

    name: str
    convention: Convention
    weight: Tensor  # in the module's weight dtype
    bias: Tensor | None  # the new bias (native or added); None where the norm needs none
    native_bias: bool  # the module has a bias of its own, which absorbed ωb

    @property
    def added_bias(self) -> bool:
        return self.bias is not None and not self.native_bias


def weight_convention(module: nn.Module, name: str) -> Convention:
    """Whether ``module`` computes ``w⊙n(x)`` or ``(1 + w)⊙n(x)``, measured by running it with ``w`` = 0 and 1.

    With its bias (if any) also zeroed, the output at ``w = 0`` is ``c·n(x)`` and at ``w = 1`` it is
    ``(c + 1)·n(x)``; ``c`` (0 or 1) is the convention. Anything else is not a per-channel scale.
    """
    weight, bias = _norm_parameters(module, name)
    generator = torch.Generator().manual_seed(0)
    x = (torch.randn(2, 3, weight.shape[0], generator=generator) * 2 + 0.5).to(weight.device, weight.dtype)
    saved = [(p, p.detach().clone()) for p in (weight, bias) if p is not None]
    try:
        with torch.no_grad():
            if bias is not None:
                bias.zero_()
            weight.zero_()
            at_zero = _plain_output(module, x).float()
            weight.fill_(1.0)
            at_one = _plain_output(module, x).float()
    finally:
        with torch.no_grad():
            for param, value in saved:
                param.copy_(value)
    normalised = at_one - at_zero
    scale = float(normalised.abs().max())
    tol = 64 * torch.finfo(weight.dtype).eps * max(scale, 1.0)
    if not scale > 0:
        raise DsoError(f"cannot tell how norm {name!r} uses its weight (its output does not depend on it)")
    if float(at_zero.abs().max()) <= tol:
        return "scale"
    if float((at_zero - normalised).abs().max()) <= tol:
        return "offset"
    raise DsoError(f"norm {name!r} is neither w*n(x) nor (1+w)*n(x) in its weight; its transform cannot be folded")


def fold_norms(model: nn.Module, tensors: Mapping[str, Tensor], alpha: float) -> list[FoldedNorm]:
    """Each hooked norm's parameters with ``h + α(a⊙h + b)`` folded in (the model is not changed).

    Written as ``new = old + α(a⊙old + b)`` on the effective scale and shift, so α = 0 reproduces the
    weights bit for bit; computed in float64, stored in the parameter's dtype.
    """
    modules = dict(model.named_modules())
    folds = []
    for name in module_names(tensors):
        if name not in modules:
            raise DsoError(f"the model has no module {name!r} that this steering artifact targets")
        module = modules[name]
        weight, bias = _norm_parameters(module, name)
        a, b = tensors[f"{name}.a"].double().cpu(), tensors[f"{name}.b"].double().cpu()
        if a.shape != weight.shape or b.shape != weight.shape:
            raise DsoError(f"steering vectors of size {a.numel()} do not fit norm {name!r} of size {weight.numel()}")
        convention = weight_convention(module, name)
        w = weight.detach().double().cpu()
        effective = w if convention == "scale" else 1.0 + w
        new_weight = (w + alpha * a * effective).to(weight.dtype)
        if bias is not None:
            beta = bias.detach().double().cpu()
            new_bias: Tensor | None = (beta + alpha * (a * beta + b)).to(bias.dtype)
        else:
            added = alpha * b
            new_bias = added.to(weight.dtype) if bool(added.ne(0).any()) else None
        folds.append(FoldedNorm(name, convention, new_weight, new_bias, bias is not None))
    return folds


def write_folds(model: nn.Module, folds: Sequence[FoldedNorm]) -> list[str]:
    """Put the folded parameters into ``model`` in place; returns the norms that got an added bias.

    An added bias is registered as the module's ``bias`` parameter with a forward hook that adds it,
    exactly what the saved modeling file does on load, so the model in memory is the exported one.
    """
    modules = dict(model.named_modules())
    added = []
    with torch.no_grad():
        for fold in folds:
            module = modules[fold.name]
            module.weight.copy_(fold.weight.to(module.weight.device))
            if fold.native_bias:
                module.bias.copy_(fold.bias.to(module.bias.device))
            elif fold.bias is not None:
                device = module.weight.device
                module.bias = nn.Parameter(fold.bias.to(device), requires_grad=False)
                module.register_forward_hook(add_norm_bias)
                added.append(fold.name)
    return added


def add_norm_bias(module: nn.Module, inputs: tuple, output: Tensor) -> Tensor:
    """Forward hook of a norm with an added bias: its output plus the bias (same as the modeling file's)."""
    return output + module.bias.to(output.device, output.dtype)


def auto_class_name(model: nn.Module) -> str:
    """The Auto class that loads this model: vision-language models (a ``vision_config``) load with
    ``AutoModelForImageTextToText``, as :func:`dso_cli.models.loading.load_model` does."""
    vision = getattr(model.config, "vision_config", None) is not None
    return "AutoModelForImageTextToText" if vision else "AutoModelForCausalLM"


def modeling_source(base: type) -> tuple[str, str]:
    """(class name, source of :data:`MODELING_FILE`): a subclass of ``base`` that adds the biases on load.

    The file imports only torch and transformers, so the checkpoint needs nothing of this package.
    """
    import transformers

    if getattr(transformers, base.__name__, None) is not base:
        raise DsoError(
            f"{base.__name__} is not a transformers model class, so its norms cannot be given an added bias; "
            "export a model loaded without remote code"
        )
    class_name = f"DsoExport{base.__name__}"
    return class_name, _MODELING_TEMPLATE.format(
        class_name=class_name, base=base.__name__, key=BIAS_MODULES_KEY, version=__version__
    )


_MODELING_TEMPLATE = '''"""{class_name}: {base} whose listed normalisation modules add a bias to their output.

Written by `dso export` (dso {version}). The checkpoint has a steering transform y + w(a*y + b) folded into
the normalisation modules of {base}: the multiplicative part is in their weights; the additive part of
the norms without a bias of their own (RMSNorm) is the `bias` parameter that this class adds to each
module named in `config.{key}`, applied by a forward hook. Needs only torch and transformers.
"""

import torch
from torch import nn
from transformers import {base}


def add_norm_bias(module, inputs, output):
    """Forward hook: the norm's output plus its added bias."""
    return output + module.bias.to(output.device, output.dtype)


class {class_name}({base}):
    def __init__(self, config, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        modules = dict(self.named_modules())
        for name in getattr(config, "{key}", None) or []:
            if name not in modules:
                raise ValueError(f"config.{key} names {{name!r}}, which is not a module of this model")
            module = modules[name]
            weight = module.weight
            module.bias = nn.Parameter(torch.zeros(weight.shape[-1], dtype=weight.dtype, device=weight.device))
            module.register_forward_hook(add_norm_bias)
'''


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
    model: nn.Module, tokenizer: Any, tensors: Mapping[str, Tensor], alpha: float, texts: Sequence[str] = PROBE_TEXTS
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
    with torch.no_grad(), apply_affine(model, steering, alpha):
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
        if RECORD_KEY not in _read_json(out / "config.json"):
            raise DsoError(f"out={out} is not empty and holds no earlier dso export; choose another directory")
    return out


def export_checkpoint(
    model: nn.Module,
    tokenizer: Any,
    tensors: Mapping[str, Tensor],
    alpha: float,
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
    """Fold ``tensors`` at strength ``alpha`` into ``model`` (in place), save model + tokenizer (+
    ``processor``) into ``out`` and verify the saved checkpoint before publishing it.

    ``record`` goes into ``config.json`` under ``dso_export``; ``extra_files`` (name -> text) are written
    beside the checkpoint. ``release``, when given, is called once the checkpoint is saved and must drop
    the caller's references to ``model``, so that loading the copy back does not need twice the memory.
    """
    out = check_out_dir(out, overwrite)
    alpha = float(alpha)
    embeddings = model.get_input_embeddings().weight
    device_map = device_map or str(embeddings.device)
    dtype, auto_class = embeddings.dtype, auto_class_name(model)
    probe = steered_probe(model, tokenizer, tensors, alpha)
    folds = fold_norms(model, tensors, alpha)
    bias_modules = [fold.name for fold in folds if fold.added_bias]
    conventions = {c: n for c in ("scale", "offset") if (n := sum(f.convention == c for f in folds))}
    native = sum(f.native_bias for f in folds)
    summary = {"norms": len(folds), "conventions": conventions, "native_bias": native, "added_bias": len(bias_modules)}
    full_record = {**(record or {}), "alpha": alpha, **summary}

    out.parent.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex
    tmp = out.parent / f".{out.name}.{token}.partial"
    tmp.mkdir()
    try:
        write_folds(model, folds)
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
    return ExportResult(out, auto_class, logit_diff, norm_diff, probe.n_tokens, conventions, native, bias_modules)


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
        if _read_json(path / name).get("processor_class") == own.__name__:
            _update_json(path / name, {"processor_class": stock.__name__})


def _norm_parameters(module: nn.Module, name: str) -> tuple[nn.Parameter, nn.Parameter | None]:
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor):
        raise DsoError(f"norm {name!r} ({type(module).__name__}) has no weight to fold the transform into")
    if weight.dim() != 1:
        raise DsoError(f"module {name!r} ({type(module).__name__}) has no per-channel weight; it is not a norm")
    if weight.device.type == "meta":
        raise DsoError(f"the weight of norm {name!r} is offloaded; export without disk/CPU offloading")
    if hasattr(module, "bias") and module.bias is None:
        raise DsoError(f"norm {name!r} was built without its bias (bias=None); its shift cannot be exported")
    bias = getattr(module, "bias", None)
    return weight, bias if isinstance(bias, torch.Tensor) else None


def _plain_output(module: nn.Module, x: Tensor) -> Tensor:
    """The module's own output, without any forward hook registered on it."""
    return module.forward(x)


def _run_norm(module: nn.Module, x: Tensor) -> Tensor:
    """A norm's output (its forward hooks included) on ``x``, in float32 on the CPU."""
    weight = module.weight
    return module(x.to(weight.device, weight.dtype)).float().cpu()


def _logits(model: nn.Module, batch: Mapping[str, Tensor]) -> Tensor:
    device = model.get_input_embeddings().weight.device
    batch = {k: v.to(device) for k, v in batch.items()}
    logits = model(**batch, use_cache=False).logits
    return logits[batch["attention_mask"].bool()].float().cpu()


def _forget_module_copy(token: str) -> None:
    """Remove the copy of the modeling file that loading the temporary directory left in transformers'
    module cache (a directory named after it, which no later load will use)."""
    from transformers.dynamic_module_utils import TRANSFORMERS_DYNAMIC_MODULE_NAME
    from transformers.utils import HF_MODULES_CACHE

    for path in (Path(HF_MODULES_CACHE) / TRANSFORMERS_DYNAMIC_MODULE_NAME).glob(f"*{token}*"):
        shutil.rmtree(path, ignore_errors=True)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _update_json(path: Path, changes: Mapping[str, Any]) -> None:
    data = _read_json(path)
    data.update(changes)
    write_json(path, data)
