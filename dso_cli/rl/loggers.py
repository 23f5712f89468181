"""Training loggers: ``logger=csv`` (train_log.csv), ``logger=wandb`` (offline by default), ``logger=none``."""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dso_cli.config.fields import make_options
from dso_cli.config.group_schemas import WandbLoggerOptions
from dso_cli.errors import DsoError
from dso_cli.io import atomic_write


class NullLogger:
    def __call__(self, row: Mapping[str, float]) -> None:
        pass

    def close(self) -> None:
        pass


class CsvLogger(NullLogger):
    """Appends one flushed row per step, so an interrupted run keeps every step it finished.

    Resuming from a checkpoint of step ``resume_step`` drops the rows logged after it (they are
    trained again) and appends to the rest.
    """

    def __init__(self, path: Path, resume_step: int | None = None) -> None:
        self.path = path
        self._file = None
        self._writer: csv.DictWriter | None = None
        self._fields: list[str] | None = None
        if resume_step is not None and path.is_file():
            with path.open(newline="") as f:
                reader = csv.DictReader(f)
                self._fields = list(reader.fieldnames or [])
                kept = [row for row in reader if float(row.get("step") or 0) <= resume_step]
            with path.open("w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=self._fields)
                writer.writeheader()
                writer.writerows(kept)

    def __call__(self, row: Mapping[str, float]) -> None:
        new_fields = [key for key in row if key not in (self._fields or [])]
        if new_fields and self._fields:  # e.g. val_pob first appears at the first evaluation step
            self._widen(self._fields + new_fields)
        if self._writer is None:
            exists = bool(self._fields)
            self._fields = self._fields or list(row)
            self._file = self.path.open("a" if exists else "w", newline="")
            self._writer = csv.DictWriter(self._file, fieldnames=self._fields)
            if not exists:
                self._writer.writeheader()
        self._writer.writerow(dict(row))
        self._file.flush()

    def _widen(self, fields: list[str]) -> None:
        """Rewrite the file under a header with more columns (earlier rows get empty cells)."""
        self.close()
        self._writer = None
        rows = []
        if self.path.is_file():
            with self.path.open(newline="") as f:
                rows = list(csv.DictReader(f))

        def write(tmp: Path) -> None:
            with tmp.open("w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=fields)
                writer.writeheader()
                writer.writerows(rows)

        atomic_write(self.path, write)
        self._fields = fields

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class WandbLogger(NullLogger):
    def __init__(self, run_dir: Path, project: str, mode: str, config: Mapping[str, Any]) -> None:
        try:
            import wandb
        except ImportError:
            raise DsoError("logger=wandb needs the wandb package (pip install wandb)") from None
        self._run = wandb.init(
            project=project,
            dir=str(run_dir),
            mode=os.environ.get("WANDB_MODE", mode),
            config=dict(config),
            name=run_dir.name,
        )

    def __call__(self, row: Mapping[str, float]) -> None:
        self._run.log(dict(row), step=int(row.get("step", 0)))

    def close(self) -> None:
        self._run.finish()


def make_logger(
    cfg: Mapping[str, Any], run_dir: Path, config: Mapping[str, Any], resume_step: int | None = None
) -> NullLogger:
    name = cfg.get("name")
    if name == "csv":
        return CsvLogger(run_dir / "train_log.csv", resume_step)
    if name == "wandb":
        opts = make_options(WandbLoggerOptions, cfg, "logger")
        return WandbLogger(run_dir, opts.project, opts.mode, config)
    if name == "none":
        return NullLogger()
    raise DsoError(f"unknown logger {name!r} (choose from csv, wandb, none)")
