"""Run directories: where a verb writes, how ``sweep``/``report`` find the newest train run, the ω grid.

A run directory holds ``config.yaml`` (the resolved train config), ``env.json`` (versions, commit,
device), ``artifact/``, ``train_log.csv``, ``sweep.csv`` and ``report/``; later verbs add their own
``<verb>_config.yaml`` and ``<verb>_env.json`` beside them. A run directory is enough to reproduce
its numbers.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import re
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from dso_cli.errors import DsoError
from dso_cli.io import environment, write_json, write_text
from dso_cli.steering.artifact import MANIFEST
from dso_cli.targets import check_targets

TRAIN_CONFIG = "config.yaml"
ARTIFACT_DIR = "artifact"
COMPARE_PREFIX = "compare_"  # `dso compare` writes compare_config.yaml into its directory
COMPARE_CONFIG = COMPARE_PREFIX + TRAIN_CONFIG


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "run"


def new_train_dir(cfg: DictConfig, job_num: int | None = None, under: str | None = None) -> Path:
    """``<outputs_root>[/<under>]/<date>/<time>_<model>_<benchmark>[_jobN][-n]``, created here.

    The directory is made with ``mkdir`` that fails when it exists, so two runs started in the same
    second (or by two jobs) never share one: the second takes the next suffix.
    """
    now = dt.datetime.now()
    stem = f"{now:%H-%M-%S}_{_slug(cfg.model.name)}_{_slug(cfg.bias_benchmark.name)}"
    if job_num is not None:
        stem += f"_job{job_num}"
    root = Path(cfg.outputs_root) / under if under else Path(cfg.outputs_root)
    base = root / f"{now:%Y-%m-%d}" / stem
    base.parent.mkdir(parents=True, exist_ok=True)
    path, n = base, 1
    while True:
        try:
            path.mkdir()
            return path
        except FileExistsError:
            path, n = base.with_name(f"{base.name}-{n}"), n + 1


RUN_FILES = (
    TRAIN_CONFIG, "env.json", "train_log.csv", "checkpoint.pt", ARTIFACT_DIR, "sweep.csv", "sweep_types.csv",
    "eval.csv", "prune.csv", "compare.csv", "report", "probs", "wandb",
)  # fmt: skip
"""What dso writes at the top of a run directory: a directory holding any of them is taken."""


def claim_run_dir(run_dir: Path, *, resume: bool, overwrite: bool) -> None:
    """Make sure a run may write into the ``run_dir`` the user named, creating it if needed.

    A directory that holds a run's files (:data:`RUN_FILES`) is refused unless the run resumes it or
    ``overwrite=true`` starts it over; ``overwrite`` empties only a directory that a dso run made (it
    has a ``config.yaml``). Other files (the log this command's output is redirected to, notes) never
    block a run and are never touched.
    """
    try:
        run_dir.mkdir(parents=True)
        return
    except FileExistsError:
        if not run_dir.is_dir():
            raise DsoError(f"run_dir {run_dir} exists and is not a directory") from None
    if resume or not any((run_dir / name).exists() for name in RUN_FILES):
        return
    if not overwrite:
        what = "an interrupted run (resume=true continues it)" if (run_dir / "checkpoint.pt").is_file() else "a run"
        raise DsoError(f"run_dir {run_dir} is not empty: it holds {what}; pass overwrite=true to start over there")
    if not (run_dir / TRAIN_CONFIG).is_file():
        raise DsoError(f"run_dir {run_dir} is not a dso run directory (no {TRAIN_CONFIG}); refusing to empty it")
    for entry in run_dir.iterdir():
        shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()


def is_run_dir(path: Path) -> bool:
    """A directory a dso verb wrote as a run: its config, an artifact or a sweep."""
    return any((path / name).is_file() for name in (TRAIN_CONFIG, f"{ARTIFACT_DIR}/{MANIFEST}", "sweep.csv"))


def runs_under(path: str | Path, depth: int = 2) -> list[Path]:
    """``path`` itself when it is a run directory, else the run directories below it (a multirun folder:
    ``M/0``, ``M/1``, …; or a day of runs), at most ``depth`` levels down, in natural order (``2``
    before ``10``). Refused in one line when there is none."""
    root = Path(path)
    if not root.is_dir():
        raise DsoError(f"run directory {root} does not exist")
    if is_run_dir(root):
        return [root]
    found: list[Path] = []
    level = [root]
    for _ in range(depth):
        below = [d for parent in level for d in parent.iterdir() if d.is_dir()]
        runs = {d for d in below if is_run_dir(d)}
        found += runs
        level = [d for d in below if d not in runs]
    if not found:
        raise DsoError(f"{root} is neither a run directory nor a folder of runs (no {TRAIN_CONFIG} or sweep.csv)")
    return sorted(found, key=_natural)


def _natural(path: Path) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]


def find_latest_train_run(outputs_root: str | Path, name_or_path: str, benchmark: str) -> Path:
    """The newest run under ``outputs_root`` trained on this model and benchmark, with an artifact."""
    candidates = []
    for config_path in Path(outputs_root).glob(f"**/{TRAIN_CONFIG}"):
        run = config_path.parent
        if not (run / ARTIFACT_DIR / MANIFEST).is_file() or (run.parent / COMPARE_CONFIG).is_file():
            continue  # untrained, or one method inside a `dso compare` directory
        cfg = OmegaConf.load(config_path)
        if (
            OmegaConf.select(cfg, "model.name_or_path") == name_or_path
            and OmegaConf.select(cfg, "bias_benchmark.name") == benchmark
        ):
            candidates.append(((run / ARTIFACT_DIR / MANIFEST).stat().st_mtime, run))
    if not candidates:
        raise DsoError(
            f"no trained run of {name_or_path} on {benchmark} under {outputs_root}/; "
            "run `dso train` first or pass run_dir=PATH"
        )
    return max(candidates)[1]


def load_train_config(run_dir: Path) -> DictConfig:
    path = run_dir / TRAIN_CONFIG
    if not path.is_file():
        raise DsoError(f"{run_dir} is not a train run directory (no {TRAIN_CONFIG})")
    try:
        cfg = OmegaConf.load(path)
    except Exception as exc:
        raise DsoError(f"{path} is not a readable config: {type(exc).__name__}") from None
    if not isinstance(cfg, DictConfig):
        raise DsoError(f"{path} is not a config mapping")
    missing = [section for section in ("model", "bias_benchmark") if not cfg.get(section)]
    if missing:  # an empty or truncated file would otherwise be run with today's defaults
        raise DsoError(f"{path} is {'empty' if not cfg else f'not a dso train config (no {missing[0]} section)'}")
    check_targets(cfg, source=str(path))  # a run's config is data: it runs no code from outside dso_cli
    from dso_cli.steering.method import register_from

    register_from(cfg.get("steering_method"))  # a (trusted) method of the user's package applies its artifact
    if OmegaConf.select(cfg, "model.trust_remote_code"):  # only ever from this command line
        cfg.model.trust_remote_code = False
    return cfg


def typed_keys(overrides: Iterable[str]) -> list[str]:
    """The keys this command line sets, in order (``+x.y=1`` -> ``x.y``; group choices such as
    ``model=hf`` included): the verbs' one parser of Hydra override strings."""
    keys = []
    for override in overrides:
        key, sep, _ = override.lstrip("+~").partition("=")
        if sep:
            keys.append(key)
    return keys


def merge_run_config(
    run_cfg: DictConfig, cfg: DictConfig, overrides: Iterable[str], sections: Sequence[str]
) -> DictConfig:
    """The run's own ``sections`` (model, benchmark, scoring), with this command's explicit overrides.

    Later verbs evaluate exactly what was trained; only what the user typed on this command line
    (e.g. ``model.device=cuda``) replaces the run's values.
    """
    merged = cfg.copy()
    OmegaConf.set_struct(merged, False)
    for section in sections:
        if section in run_cfg:
            merged[section] = run_cfg[section].copy()
    for key in typed_keys(overrides):
        if any(key.startswith(f"{s}.") for s in sections):
            OmegaConf.update(merged, key, OmegaConf.select(cfg, key), force_add=True)
    return merged


NOT_RESULTS = (
    "run_dir", "outputs_root", "allow_targets", "logger", "hydra", "verb", "resume", "overwrite", "extract",
    "scoring.batch_size", "scoring.tree_tokens", "scoring.tree_attention_chunk", "scoring.cpu_linear",
)  # fmt: skip
"""Settings that change where results go or how fast they come, not what they are."""


def result_settings(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as flat ``key -> value``, without :data:`NOT_RESULTS`: what a result depends on."""
    flat: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        else:
            flat[prefix[:-1]] = node

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return {k: v for k, v in flat.items() if not any(k == n or k.startswith(n + ".") for n in NOT_RESULTS)}


def settings_hash(cfg: DictConfig) -> str:
    """sha256 of :func:`result_settings`: two runs with the same hash were made with the same settings."""
    return hashlib.sha256(json.dumps(result_settings(cfg), sort_keys=True, default=str).encode()).hexdigest()


def settings_differences(old: DictConfig, new: DictConfig) -> list[str]:
    """``key=old (now new)`` for every result setting that differs."""
    a, b = result_settings(old), result_settings(new)
    unset = "<unset>"
    return [f"{k}={a.get(k, unset)} (now {b.get(k, unset)})" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def save_provenance(run_dir: Path, cfg: DictConfig, prefix: str = "", extra: dict[str, Any] | None = None) -> None:
    """Write the resolved config and the environment (versions, commit, device) into ``run_dir``."""
    write_text(run_dir / f"{prefix}config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    write_json(run_dir / f"{prefix}env.json", environment(extra))


def parse_strengths(value: Any, name: str = "alpha") -> list[float]:
    """``"start:stop:step"`` (inclusive of stop), a number, or a list of numbers -> sorted values >= 0."""
    if isinstance(value, (list, tuple, ListConfig)):
        try:
            grid = [float(v) for v in value]
        except (TypeError, ValueError):
            raise DsoError(f"{name}={list(value)} must hold numbers only") from None
    elif isinstance(value, (int, float)):
        grid = [float(value)]
    elif str(value).strip().startswith("[") and str(value).strip().endswith("]"):
        return parse_strengths([v for v in str(value).strip()[1:-1].split(",") if v.strip()] or [float("nan")], name)
    else:
        text = str(value).strip()
        parts = text.split(":")
        try:
            numbers = [float(p) for p in parts]
        except ValueError:
            raise DsoError(
                f"{name}={text!r} does not parse: use start:stop:step (e.g. 0:1:0.1) or a list [0,0.5,1]"
            ) from None
        if len(numbers) == 1:
            grid = numbers
        elif len(numbers) == 3:
            start, stop, step = numbers
            if step <= 0 or stop < start:
                raise DsoError(f"{name}={text!r}: need start <= stop and step > 0")
            n = math.floor((stop - start) / step + 1e-9)
            grid = [round(start + i * step, 10) for i in range(n + 1)]
        else:
            raise DsoError(f"{name}={text!r} does not parse: use start:stop:step (e.g. 0:1:0.1) or a list [0,0.5,1]")
    if not grid or any(not math.isfinite(a) or a < 0 for a in grid):
        raise DsoError(f"{name}={value!r}: values must be finite and >= 0")
    return sorted(set(grid))
