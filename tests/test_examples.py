"""``dso examples``: the shipped example files are written out once, and a user's edited copy is never
overwritten."""

from __future__ import annotations

import pytest

from dso_cli.benchmarks.examples import SHIPPED, example_files, write_examples
from dso_cli.errors import DsoError
from tests.cli_runner import ROOT, dso


def test_the_package_ships_the_examples_the_docs_use():
    names = {str(p) for p in example_files()}
    assert {"decisions/hiring.jsonl", "lm_eval_tasks/dso_occupation_mc.yaml"} <= names
    assert (ROOT / "examples").resolve() == SHIPPED, "examples/ is the package's examples folder"


def test_written_once_then_left_alone(tmp_path):
    written = write_examples(tmp_path)
    assert sorted(p.relative_to(tmp_path) for p in written) == example_files()
    assert all((tmp_path / f).read_bytes() == (SHIPPED / f).read_bytes() for f in example_files())
    assert write_examples(tmp_path) == []


def test_an_edited_example_is_refused_before_anything_is_written(tmp_path):
    edited = tmp_path / "decisions" / "hiring.jsonl"
    edited.parent.mkdir(parents=True)
    edited.write_text("mine\n")
    with pytest.raises(DsoError, match="differs from the shipped example"):
        write_examples(tmp_path)
    assert edited.read_text() == "mine\n"
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == [edited]


def test_the_command_writes_into_the_given_folder_or_the_current_one(tmp_path):
    assert dso("examples", str(tmp_path / "ex")).returncode == 0
    assert (tmp_path / "ex" / "decisions" / "hiring.jsonl").is_file()
    result = dso("examples", cwd=tmp_path)
    assert result.returncode == 0 and "bias.path=examples/decisions/hiring.jsonl" in result.stdout
    assert (tmp_path / "examples" / "lm_eval_tasks" / "dso_occupation_mc.yaml").is_file()
    assert dso("examples", "a", "b").returncode == 2
