"""The steering artifact: tensors in safetensors plus a JSON manifest, saved as one directory.

The artifact is the contract between fitting a method and applying it: it names the method, the
modules it hooks and their sizes, the model it was fitted on (with a weight fingerprint) and the
meaning of its strength knob. Loading it onto a different model fails with a one-line error. The
manifest records the tensors file's sha256 and the tensors file's own safetensors header names the
method and the model, so a corrupted file, or a tensors file from another artifact, is refused.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import safetensors
import safetensors.torch
from torch import Tensor, nn

from dso_cli.errors import DsoError
from dso_cli.io import atomic_write, git_commit, sha256_of, write_json
from dso_cli.steering.method import SteeringMethod, method_class
from dso_cli.version import __version__

if TYPE_CHECKING:
    from dso_cli.scoring import OptionScorer
    from dso_cli.steering.affine import SteeringHandle

FORMAT_VERSION = 1
TENSORS = "tensors.safetensors"
MANIFEST = "manifest.json"


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

    def method_class(self) -> type[SteeringMethod]:
        """The registered :class:`SteeringMethod` that made (and applies) this artifact."""
        return method_class(self.method)

    def apply(self, model: nn.Module, strength: float = 1.0) -> AbstractContextManager[SteeringHandle]:
        """Context manager that steers ``model`` at ``strength`` and removes its hooks on exit."""
        device = next(model.parameters()).device
        tensors = {k: v.to(device) for k, v in self.tensors.items()}
        return self.method_class().apply(model, tensors, strength)

    def steer(self, scorer: OptionScorer, strength: float = 1.0) -> AbstractContextManager[SteeringHandle]:
        """Steer what ``scorer`` scores at ``strength``: its model, or its prompts for a prompt method."""
        device = next(scorer.model.parameters()).device
        tensors = {k: v.to(device) for k, v in self.tensors.items()}
        return self.method_class().steer(scorer, tensors, strength)

    def header(self) -> dict[str, str]:
        """What the tensors file says about itself (safetensors metadata: strings only)."""
        return {
            "format": "pt",
            "dso_method": self.method,
            "dso_format_version": str(FORMAT_VERSION),
            "model_fingerprint": str(self.manifest.get("model", {}).get("fingerprint")),
        }

    def save(self, path: str | Path) -> Path:
        """Write tensors, then the manifest with their sha256 (its presence marks a complete artifact)."""
        path = Path(path)
        header = self.header()
        atomic_write(path / TENSORS, lambda tmp: safetensors.torch.save_file(self.tensors, str(tmp), metadata=header))
        self.manifest["tensors_sha256"] = sha256_of(path / TENSORS)
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
        recorded = manifest.get("tensors_sha256")  # absent in artifacts of older dso versions
        if recorded is not None and sha256_of(path / TENSORS) != recorded:
            raise DsoError(f"{path / TENSORS} does not match its manifest's sha256 (changed or corrupted since saved)")
        try:
            with safetensors.safe_open(str(path / TENSORS), framework="pt") as f:
                header = f.metadata() or {}
                # cloned into fresh (aligned) memory: a tensor at an odd offset of the file can take
                # another SIMD path through a matmul and differ from the saved one in the last bit
                tensors = {key: f.get_tensor(key).clone() for key in f.keys()}
        except Exception as exc:  # safetensors raises its own error type for truncated or garbled files
            raise DsoError(f"{path / TENSORS} is not a readable safetensors file ({type(exc).__name__})") from None
        artifact = cls(manifest["method"], tensors, manifest)
        for key, value in artifact.header().items():
            if key in header and header[key] != value:
                raise DsoError(f"{path / TENSORS} belongs to another artifact ({key} {header[key]}, manifest: {value})")
        artifact.check_structure(path)
        if model_info is not None:
            artifact.check_model(model_info)
        return artifact

    def check_structure(self, where: str | Path) -> None:
        """The manifest's ``modules`` and the tensors agree (an affine artifact has ``a`` and ``b`` of the
        recorded size for each), so a damaged artifact fails here, not at its first steered forward."""
        modules = self.manifest.get("modules", {})
        if not isinstance(modules, dict):
            raise DsoError(f"{where}: the manifest's modules is not a mapping")
        held = {key.rsplit(".", 1)[0] for key in self.tensors}
        if held != set(modules):
            odd = sorted(held ^ set(modules))[0]
            raise DsoError(f"{where}: the manifest's modules and the tensors disagree (module {odd!r})")
        if self.method_class().affine:
            for name, shape in modules.items():
                for part in ("a", "b"):
                    tensor = self.tensors.get(f"{name}.{part}")
                    if tensor is None:
                        raise DsoError(f"{where}: no {name}.{part} tensor (an affine artifact needs a and b)")
                    if list(tensor.shape) != list(shape):
                        raise DsoError(f"{where}: {name}.{part} has shape {list(tensor.shape)}, manifest {shape}")

    def check_fits(self, model: nn.Module) -> None:
        """Every module the artifact steers exists in ``model`` (and, for an affine artifact, has the
        recorded width): checked before any row is measured."""
        if self.method_class().module_free:
            return
        named = dict(model.named_modules())
        modules = self.manifest.get("modules", {})
        missing = [name for name in modules if name not in named]
        if missing:
            raise DsoError(
                f"the model has no module {missing[0]!r} that this steering artifact targets "
                f"({len(missing)} of {len(modules)} missing)"
            )
        if self.method_class().affine:
            for name, shape in modules.items():
                weight = getattr(named[name], "weight", None)
                if isinstance(weight, Tensor) and weight.shape[-1] != shape[0]:
                    raise DsoError(f"module {name!r} has width {weight.shape[-1]}, this artifact steers {shape[0]}")

    def check_model(self, model_info: Mapping[str, Any]) -> None:
        trained = self.manifest.get("model", {})
        if trained.get("fingerprint") != model_info.get("fingerprint"):
            raise DsoError(
                f"this artifact was fitted on {trained.get('name_or_path')} (fingerprint "
                f"{trained.get('fingerprint')}), not on {model_info.get('name_or_path')} "
                f"(fingerprint {model_info.get('fingerprint')})"
            )
