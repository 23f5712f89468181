"""``dso export``: a trained affine artifact folded at one strength into a Hugging Face checkpoint.

The artifact of a run (``dso`` or ``mean_match``, the methods applied as ``h + ω(a⊙h + b)`` on norm
outputs) is folded into the norms of the run's model at strength ``alpha`` (see :mod:`dso_cli.steering.export`)
and saved with its tokenizer (and processor, for vision-language models) in ``out``, together with the
resolved config (``dso_export.yaml``) and environment (``dso_export_env.json``). The checkpoint loads
with plain ``transformers``, needs no steering hooks, and is verified against the hooked model before
it is written. The run directory itself is not changed.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from dso_cli.errors import DsoError
from dso_cli.io import environment, git_commit, sha256_of
from dso_cli.models.loading import load_model
from dso_cli.pipeline.runs import ARTIFACT_DIR, parse_strengths
from dso_cli.pipeline.setup import seed_everything
from dso_cli.pipeline.specs import ModelSetup
from dso_cli.pipeline.trained_run import run_config
from dso_cli.steering.artifact import MANIFEST, TENSORS, Artifact
from dso_cli.steering.export import check_out_dir, export_checkpoint
from dso_cli.steering.prune import is_affine
from dso_cli.version import __version__

CONFIG_FILE = "dso_export.yaml"
ENV_FILE = "dso_export_env.json"


def parse_export_strength(value: object) -> float | None:
    """``alpha=0.5``: one strength >= 0, or None for the artifact's trained strength."""
    if value is None:
        return None
    grid = parse_strengths(value)
    if len(grid) != 1:
        raise DsoError(f"alpha={value}: dso export folds in one strength, not a grid")
    return grid[0]


def parse_tolerance(value: object) -> float:
    try:
        tolerance = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise DsoError(f"tolerance={value!r} is not a number") from None
    if not (math.isfinite(tolerance) and tolerance > 0):
        raise DsoError(f"tolerance={value!r} must be a finite number > 0")
    return tolerance


def check_export(cfg: DictConfig) -> None:
    """What can be checked before loading anything: the strength, the tolerance and the output directory."""
    parse_export_strength(cfg.alpha)
    parse_tolerance(cfg.tolerance)
    check_out_dir(cfg.out, bool(cfg.overwrite))


def local_name(value: str) -> str:
    """An absolute local path as ``<local>/<its last part>``; anything else (a hub id, a relative path)
    unchanged. Exported checkpoints travel: they should not carry the exporting machine's paths."""
    expanded = os.path.expanduser(value)
    return f"<local>/{Path(expanded).name}" if os.path.isabs(expanded) else value


def without_local_paths(node: Any) -> Any:
    """``node`` (a plain config container) with every absolute path string replaced by :func:`local_name`."""
    if isinstance(node, dict):
        return {key: without_local_paths(value) for key, value in node.items()}
    if isinstance(node, list):
        return [without_local_paths(value) for value in node]
    return local_name(node) if isinstance(node, str) and ("/" in node or "\\" in node) else node


def run_export(cfg: DictConfig, overrides: Sequence[str] = ()) -> Path:
    strength = parse_export_strength(cfg.alpha)
    tolerance = parse_tolerance(cfg.tolerance)
    out = check_out_dir(cfg.out, bool(cfg.overwrite))
    run_dir, cfg = run_config(cfg, overrides)
    if out.resolve() == run_dir.resolve() or out.resolve() in run_dir.resolve().parents:
        raise DsoError(f"out={out} would replace the run directory {run_dir}; choose another directory")
    artifact_dir = run_dir / ARTIFACT_DIR
    if not (artifact_dir / MANIFEST).is_file():
        raise DsoError(f"run_dir {run_dir} has no trained artifact ({artifact_dir}); run `dso train` first")
    artifact = Artifact.load(artifact_dir)
    if not is_affine(artifact):
        raise DsoError(f"run {run_dir} holds a {artifact.method} artifact; dso export needs dso or mean_match")
    if strength is None:
        strength = float(artifact.manifest.get("strength", {}).get("trained_at", 1))
    if any(o.lstrip("+").startswith("model.dtype=") for o in overrides) and cfg.model.dtype != "float32":
        raise DsoError(
            f"dso export folds and verifies in float32, not model.dtype={cfg.model.dtype}; "
            "load the exported checkpoint with dtype=torch.bfloat16 instead"
        )
    cfg.model.dtype = "float32"
    cfg.alpha = strength

    setup = ModelSetup.from_config(cfg)
    seed_everything(setup.seed)
    loaded = load_model(**setup.model)  # no scorer: the export verifies logits itself
    artifact.check_model(loaded.describe())
    record = {
        "method": artifact.method,
        "run_dir": run_dir.resolve().name,  # names, not this machine's paths: the checkpoint is shared
        "model": local_name(loaded.name_or_path),
        "model_fingerprint": loaded.fingerprint,
        "artifact_sha256": sha256_of(artifact_dir / TENSORS)[:16],
        "artifact_created": artifact.manifest.get("created"),
        "dso_version": __version__,
        "git_commit": git_commit(),
    }
    shared_cfg = OmegaConf.create(without_local_paths(OmegaConf.to_container(cfg, resolve=True)))
    extra_files = {
        CONFIG_FILE: OmegaConf.to_yaml(shared_cfg),
        ENV_FILE: json.dumps(environment(), indent=2, default=str) + "\n",
    }
    print(f"dso export: {artifact.method} from {run_dir} at strength {strength:g} into {out}", flush=True)
    result = export_checkpoint(
        loaded.model,
        loaded.tokenizer,
        artifact.tensors,
        strength,
        out,
        processor=loaded.processor,
        record=record,
        extra_files=extra_files,
        overwrite=bool(cfg.overwrite),
        tolerance=tolerance,
        device_map=cfg.model.device_map,
        release=lambda: setattr(loaded, "model", None),
    )
    conventions = ", ".join(f"{n} {c}" for c, n in result.conventions.items())
    moved = f"{result.shifts_in_linears} shifts in the biases of the linears that read them"
    if result.config_flags:
        moved += f" ({', '.join(f'{flag}=true' for flag in result.config_flags)})"
    print(f"dso export: folded {sum(result.conventions.values())} norms ({conventions}); "
          f"{result.native_bias} native bias, {moved}")  # fmt: skip
    if result.remote_code:
        shown = ", ".join(result.bias_modules[:4]) + (" ..." if len(result.bias_modules) > 4 else "")
        print(f"dso export: {len(result.bias_modules)} norms need the modeling file (remote code) for their shift: "
              f"{shown}; train with steering_method.stock_export=true for a stock checkpoint")  # fmt: skip
    print(f"dso export: verified max |Δlogits| = {result.max_logit_diff:.2e} on {result.probe_tokens} probe tokens "
          f"(norm outputs {result.max_norm_diff:.2e}; tolerance {tolerance:g})")  # fmt: skip
    print(f"dso export: saved {out}; load with {result.load_hint()}", flush=True)
    return out
