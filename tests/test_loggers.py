"""Training loggers: the CSV log keeps every column that ever appears, and resumes by trimming."""

import csv

import pytest

from dso_cli.errors import DsoError
from dso_cli.rl.loggers import CsvLogger, NullLogger, make_logger


def read(path):
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_columns_that_appear_later_are_kept(tmp_path):
    path = tmp_path / "train_log.csv"
    log = CsvLogger(path)
    log({"step": 1, "reward": 0.5})
    log({"step": 2, "reward": 0.25, "val_pob": 0.1})  # evaluations start at step 2
    log({"step": 3, "reward": 0.0})
    log.close()
    rows = read(path)
    assert [r["step"] for r in rows] == ["1", "2", "3"]
    assert [r["val_pob"] for r in rows] == ["", "0.1", ""]
    assert rows[2]["reward"] == "0.0"


def test_resume_trims_later_steps_and_appends(tmp_path):
    path = tmp_path / "train_log.csv"
    log = CsvLogger(path)
    for step in (1, 2, 3, 4):
        log({"step": step, "reward": step / 10})
    log.close()
    log = CsvLogger(path, resume_step=2)
    log({"step": 3, "reward": 0.9, "val_pob": 0.2})
    log.close()
    rows = read(path)
    assert [(r["step"], r["reward"], r["val_pob"]) for r in rows] == [("1", "0.1", ""), ("2", "0.2", ""),
                                                                       ("3", "0.9", "0.2")]  # fmt: skip


def test_make_logger_by_name(tmp_path):
    assert isinstance(make_logger({"name": "none"}, tmp_path, {}), NullLogger)
    assert isinstance(make_logger({"name": "csv"}, tmp_path, {}), CsvLogger)
    with pytest.raises(DsoError, match="unknown logger"):
        make_logger({"name": "tensorboard"}, tmp_path, {})
