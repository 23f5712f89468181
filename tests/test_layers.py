"""The package's structure: import-linter's contracts (layers, no cycles) hold, and the pieces that keep
lower layers from reaching up (a method's declared placement, the trainer's ``apply``) work."""

from __future__ import annotations

import pytest


def test_import_contracts_hold():
    from importlinter.cli import lint_imports

    assert lint_imports(config_filename="pyproject.toml") == 0  # the report names the broken import


def test_every_declared_placement_has_a_drawing():
    from dso_cli.report.placement import DRAWINGS
    from dso_cli.steering.method import PLACEMENTS

    assert set(DRAWINGS) == set(PLACEMENTS)


def test_builtin_methods_declare_how_they_are_drawn():
    from dso_cli.steering.method import method_class

    assert method_class("dso").placement == "affine"
    assert method_class("caa").placement == "vector"
    assert method_class("iti").placement == "heads"
    assert method_class("prompting").placement is None


def test_an_unknown_placement_is_refused_when_the_method_is_defined():
    from dso_cli.steering.method import SteeringMethod

    with pytest.raises(TypeError, match="placement must be None or one of affine, vector, heads"):

        class Drawn(SteeringMethod):
            placement = "sideways"
