"""The steering artifact: tensors in safetensors plus a JSON manifest, saved as one directory.

The artifact is the contract between fitting a method and applying it: it names the method, the
modules it hooks and their sizes, the model it was fitted on (with a weight fingerprint) and the
meaning of its strength knob. Loading it onto a different model fails with a one-line error.
"""

from __future__ import annotations

import datetime as dt
import importlib
import json
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors.torch
from torch import Tensor, nn

from dso_cli import __version__
from dso_cli.errors import DsoError
from dso_cli.io import atomic_write, git_commit, write_json
from dso_cli.steering.affine import SteeringHandle, apply_affine

FORMAT_VERSION = 1
TENSORS = "tensors.safetensors"
MANIFEST = "manifest.json"

Applier = Callable[[nn.Module, Mapping[str, Tensor], float], AbstractContextManager[SteeringHandle]]
APPLIERS: dict[str, Applier] = {"dso": apply_affine, "mean_match": apply_affine}
"""How each method's tensors act on a model; every method shares the same artifact format."""


@dataclass
class Artifact:
    method: str
    tensors: dict[str, Tensor]
    manifest: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def create(
        cls,
        method: str,
        tensors: Mapping[str, Tensor],
        *,
        model: Mapping[str, Any],
        hyperparameters: Mapping[str, Any],
        strength: Mapping[str, Any],
        train_metrics: Mapping[str, Any] | None = None,
    ) -> Artifact:
        """Build an artifact with a complete manifest (``model`` is ``LoadedModel.describe()``)."""
        detached = {k: v.detach().float().cpu().contiguous() for k, v in tensors.items()}
        manifest = {
            "format_version": FORMAT_VERSION,
            "method": method,
            "hyperparameters": dict(hyperparameters),
            "modules": {name: list(detached[key].shape) for key in detached for name in [key.rsplit(".", 1)[0]]},
            "model": dict(model),
            "strength": dict(strength),
            "token_scope": "all",
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "dso_version": __version__,
            "git_commit": git_commit(),
            "train_metrics": dict(train_metrics or {}),
        }
        return cls(method, detached, manifest)

    def apply(self, model: nn.Module, strength: float = 1.0) -> AbstractContextManager[SteeringHandle]:
        """Context manager that steers ``model`` at ``strength`` and removes its hooks on exit."""
        if self.method not in APPLIERS:  # each method's module registers its applier on import
            try:
                importlib.import_module(f"dso_cli.steering.{self.method}")
            except ImportError:
                pass
        if self.method not in APPLIERS:
            raise DsoError(f"no way to apply steering method {self.method!r} (known: {', '.join(APPLIERS)})")
        device = next(model.parameters()).device
        tensors = {k: v.to(device) for k, v in self.tensors.items()}
        return APPLIERS[self.method](model, tensors, strength)

    def save(self, path: str | Path) -> Path:
        """Write tensors, then the manifest (the manifest's presence marks a complete artifact)."""
        path = Path(path)
        atomic_write(path / TENSORS, lambda tmp: safetensors.torch.save_file(self.tensors, str(tmp)))
        write_json(path / MANIFEST, self.manifest)
        return path

    @classmethod
    def load(cls, path: str | Path, model_info: Mapping[str, Any] | None = None) -> Artifact:
        """Read an artifact; with ``model_info`` (``LoadedModel.describe()``) check it fits that model."""
        path = Path(path)
        if not (path / MANIFEST).is_file() or not (path / TENSORS).is_file():
            raise DsoError(f"no steering artifact in {path} (expected {MANIFEST} and {TENSORS})")
        try:
            manifest = json.loads((path / MANIFEST).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DsoError(f"{path / MANIFEST} is not valid JSON: {exc}") from None
        if not isinstance(manifest, dict) or not isinstance(manifest.get("method"), str):
            raise DsoError(f"{path / MANIFEST} is not a steering artifact manifest (no method)")
        if manifest.get("format_version") != FORMAT_VERSION:
            raise DsoError(
                f"{path} has artifact format {manifest.get('format_version')}, this dso reads {FORMAT_VERSION}"
            )
        try:
            tensors = safetensors.torch.load_file(str(path / TENSORS))
        except Exception as exc:  # safetensors raises its own error type for truncated or garbled files
            raise DsoError(f"{path / TENSORS} is not a readable safetensors file ({type(exc).__name__})") from None
        artifact = cls(manifest["method"], tensors, manifest)
        if model_info is not None:
            artifact.check_model(model_info)
        return artifact

    def check_model(self, model_info: Mapping[str, Any]) -> None:
        trained = self.manifest.get("model", {})
        if trained.get("fingerprint") != model_info.get("fingerprint"):
            raise DsoError(
                f"this artifact was fitted on {trained.get('name_or_path')} (fingerprint "
                f"{trained.get('fingerprint')}), not on {model_info.get('name_or_path')} "
                f"(fingerprint {model_info.get('fingerprint')})"
            )
