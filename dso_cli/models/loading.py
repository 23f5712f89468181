"""Load a causal LM (or a vision-language model) and its tokenizer: packaged, hub ids and local paths alike.

A checkpoint whose config has a ``vision_config`` is a vision-language model: it is loaded with
``AutoModelForImageTextToText`` (``AutoModelForCausalLM`` refuses LLaVA and Qwen2.5-VL and silently
drops Mllama's vision tower) together with its processor.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dso_cli.errors import DsoError, first_line
from dso_cli.models import packaged
from dso_cli.models.fingerprint import model_fingerprint
from dso_cli.models.layouts import model_family

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: Any
    name: str
    name_or_path: str
    revision: str | None
    family: str
    device: torch.device
    dtype: torch.dtype
    fingerprint: str
    processor: Any = None  # vision-language models: turns images + text into model inputs

    @property
    def is_multimodal(self) -> bool:
        return self.processor is not None

    @classmethod
    def wrap(cls, model: nn.Module, tokenizer: Any, processor: Any = None, name: str | None = None) -> LoadedModel:
        """A model already in memory (any ``transformers`` causal LM or vision-language model, loaded
        however the user likes) described as :func:`load_model` describes the ones it loads."""
        source = str(getattr(getattr(model, "config", None), "_name_or_path", "") or name or type(model).__name__)
        embeddings = model.get_input_embeddings()
        return cls(
            model=model,
            tokenizer=tokenizer,
            name=name or Path(source).name,
            name_or_path=source,
            revision=None,
            family=model_family(model),
            device=embeddings.weight.device,
            dtype=embeddings.weight.dtype,
            fingerprint=model_fingerprint(model),
            processor=processor,
        )

    def describe(self) -> dict[str, Any]:
        """What an artifact manifest records about the model it was fitted on."""
        return {
            "name": self.name,
            "name_or_path": self.name_or_path,
            "revision": self.revision,
            "family": self.family,
            "fingerprint": self.fingerprint,
            "dtype": str(self.dtype).removeprefix("torch."),
        }


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DsoError(f"model.device={device} but no CUDA device is available (use model.device=cpu)")
    try:
        return torch.device(device)
    except RuntimeError:
        raise DsoError(f"model.device={device!r} is not a device (use auto, cpu, cuda or cuda:N)") from None


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise DsoError(f"model.dtype={dtype!r} is not one of auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def load_model(
    name_or_path: str,
    *,
    name: str | None = None,
    revision: str | None = None,
    device: str = "auto",
    dtype: str = "auto",
    device_map: str | None = None,
    trust_remote_code: bool = False,
    **_: Any,
) -> LoadedModel:
    """Load model + tokenizer in eval mode with frozen weights (only steering parameters train).

    ``name_or_path`` is a hub id, a local directory, or ``packaged://<package>/<file.gguf>``.
    ``device_map`` (e.g. ``auto``) shards a large model over the visible GPUs instead of ``device``.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText, AutoTokenizer

    from dso_cli.models.processors import load_processor

    source = str(name_or_path)
    if source.startswith(packaged.SCHEME):
        source = str(packaged.dequantised_checkpoint(source))
    elif _looks_like_path(source) and not Path(source).expanduser().exists():
        raise DsoError(f"model path {source!r} does not exist")
    target = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, target)
    kwargs: dict[str, Any] = {"revision": revision, "trust_remote_code": trust_remote_code}
    local = os.path.expanduser(source)
    if trust_remote_code and Path(local).is_dir():
        from dso_cli.models.remote_code import check_modeling_file

        check_modeling_file(local)  # a dso export's modeling file runs on load: it must be the one exported
    processor = None
    try:
        config = AutoConfig.from_pretrained(local, **kwargs)
        if getattr(config, "vision_config", None) is not None:
            processor = load_processor(local, config.model_type, **kwargs)
            tokenizer = processor.tokenizer
            auto_class: Any = AutoModelForImageTextToText
        else:
            tokenizer = AutoTokenizer.from_pretrained(local, **kwargs)
            auto_class = AutoModelForCausalLM
        model = auto_class.from_pretrained(local, dtype=torch_dtype, device_map=device_map or str(target), **kwargs)
    except torch.OutOfMemoryError:
        raise DsoError(f"out of memory loading {name_or_path!r} on {target}; try model.device_map=auto") from None
    except (OSError, ValueError, ImportError, TypeError) as exc:
        first = first_line(exc)
        raise DsoError(f"cannot load model {name_or_path!r}: {first}") from None
    model.eval()
    model.requires_grad_(False)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        name=name or Path(str(name_or_path)).name,
        name_or_path=str(name_or_path),
        revision=revision,
        family=model_family(model),
        device=model.get_input_embeddings().weight.device,
        dtype=torch_dtype,
        fingerprint=model_fingerprint(model),
        processor=processor,
    )


def is_multimodal(model_cfg: Mapping[str, Any]) -> bool:
    """Is this ``model`` config section a vision-language model? ``model.multimodal`` when set, else
    whether the checkpoint's config has a vision tower (read from the local path or the hub cache)."""
    if model_cfg.get("multimodal") is not None:
        return bool(model_cfg["multimodal"])
    source = str(model_cfg.get("name_or_path", ""))
    if not source or source.startswith(packaged.SCHEME):
        return False
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(
            os.path.expanduser(source),
            revision=model_cfg.get("revision"),
            trust_remote_code=bool(model_cfg.get("trust_remote_code", False)),
        )
    except (OSError, ValueError):
        return False  # not reachable now: loading the model will say why
    return getattr(config, "vision_config", None) is not None


def _looks_like_path(source: str) -> bool:
    """Hub ids are ``name`` or ``org/name``; anything else with a slash, or starting ``.``/``~``, is a path."""
    return source.startswith((".", "/", "~")) or source.count("/") > 1
