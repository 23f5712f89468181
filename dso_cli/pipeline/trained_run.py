"""A trained run located and checked: its directory, its config merged with this command line's,
and its artifact (refused before the model loads when it is garbled or its training items overlap
the evaluated split)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
from omegaconf import DictConfig

from dso_cli.benchmarks import build_benchmark, split_items
from dso_cli.errors import DsoError
from dso_cli.models.loading import LoadedModel
from dso_cli.pipeline.leakage import check_no_leakage
from dso_cli.pipeline.runs import ARTIFACT_DIR, find_latest_train_run, load_train_config, merge_run_config
from dso_cli.pipeline.setup import load_scored_model
from dso_cli.pipeline.specs import ModelSetup, RunLocation
from dso_cli.scoring import OptionScorer
from dso_cli.steering.artifact import Artifact

RUN_SECTIONS = ("model", "bias_benchmark", "scoring", "steering_method", "optimizer")


def resolve_run_dir(location: RunLocation) -> Path:
    if location.run_dir is not None:
        if not location.run_dir.is_dir():
            raise DsoError(f"run_dir {location.run_dir} does not exist")
        return location.run_dir
    return find_latest_train_run(location.outputs_root, location.model, location.benchmark)


def run_config(cfg: DictConfig, overrides: Sequence[str]) -> tuple[Path, DictConfig]:
    """The run directory and this verb's config with the run's model/benchmark/scoring sections (the
    one step that reads two whole configs: it merges them)."""
    run_dir = resolve_run_dir(RunLocation.from_config(cfg))
    train_cfg = load_train_config(run_dir)
    chosen = [o.partition("=")[2] for o in overrides if o.startswith("model=")]
    if chosen and chosen[-1] != train_cfg.model.name:
        raise DsoError(f"run {run_dir} was trained on model={train_cfg.model.name}, not model={chosen[-1]}")
    merged = merge_run_config(train_cfg, cfg, overrides, RUN_SECTIONS)
    merged.run_dir = str(run_dir)
    return run_dir, merged


@dataclass
class TrainedRun:
    """A trained run ready to evaluate: its artifact checked against the loaded model."""

    run_dir: Path
    artifact: Artifact
    splits: datasets.DatasetDict
    loaded: LoadedModel
    scorer: OptionScorer


def open_trained_run(
    run_dir: Path,
    setup: ModelSetup,
    benchmark: Mapping[str, Any],
    *,
    verb: str,
    evaluated: Sequence[str] = (),
    overrides: Sequence[str] = (),
) -> TrainedRun:
    """The artifact of ``run_dir``, ``benchmark``'s splits and the model of ``setup``. Everything that
    can be refused (a garbled artifact, an ``evaluated`` split that shares items with the training
    items) is checked before the model loads; nothing is written here (the verb saves
    ``<verb>_config.yaml`` with its first result)."""
    artifact_dir = run_dir / ARTIFACT_DIR
    if not (artifact_dir / "manifest.json").is_file():
        raise DsoError(f"run_dir {run_dir} has no trained artifact ({artifact_dir}); run `dso train` first")
    artifact = Artifact.load(artifact_dir)
    splits = build_benchmark(benchmark, setup.model)
    held_out = {s: split_items(splits, s) for s in evaluated if s != "train"}
    train = split_items(splits, "train") if "train" in splits else None
    note = check_no_leakage(artifact.manifest, held_out, overrides, train)
    if note:
        print(f"dso {verb}: note: {note}", flush=True)
    loaded, scorer = load_scored_model(setup)
    artifact.check_model(loaded.describe())
    artifact.check_fits(loaded.model)
    return TrainedRun(run_dir, artifact, splits, loaded, scorer)
