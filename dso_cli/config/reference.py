"""The configuration reference page (``docs/reference/config.md``), generated from the options classes
so it cannot drift from them: every key of every verb section and group option, its type, default
and help text. ``scripts/config_reference.py`` writes it; a test checks the committed page is current."""

from __future__ import annotations

import typing
from dataclasses import fields, is_dataclass
from typing import Any

from omegaconf import MISSING

from dso_cli.config.fields import default_of
from dso_cli.config.group_schemas import IDENTITY, OPTIONS
from dso_cli.config.schema import SCHEMAS, BaseSchema

GROUP_TITLES = {
    "bias_benchmark": "bias_benchmark (`bias=`)",
    "steering_method": "steering_method",
    "optimizer": "optimizer",
    "reward": "reward",
    "logger": "logger",
    "capability": "capability (`dso eval`'s `eval.capability=[...]`)",
}


def _type_name(hint: Any) -> str:
    text = getattr(hint, "__name__", None) if not typing.get_args(hint) else None
    text = text or str(hint).replace("typing.", "")
    return "any" if text == "Any" else text.replace("NoneType", "None")


def _default(value: Any) -> str:
    if value is MISSING:
        return "required"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _rows(cls: type, prefix: str, skip: tuple[str, ...] = ()) -> list[str]:
    """One table row per setting of ``cls`` (a nested section becomes its own rows)."""
    hints = typing.get_type_hints(cls)
    rows = []
    for spec in fields(cls):
        if spec.name in skip:
            continue
        value = default_of(spec)
        key = f"{prefix}{spec.name}"
        if is_dataclass(value):
            rows += _rows(type(value), f"{key}.")
            continue
        help_text = spec.metadata.get("help", "").replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")
        kind = _type_name(hints[spec.name]).replace("|", "\\|")
        rows.append(f"| `{key}` | {kind} | `{_default(value)}` | {help_text} |")
    return rows


def _table(rows: list[str]) -> list[str]:
    return ["| key | type | default | what it sets |", "|---|---|---|---|", *rows, ""]


def render_reference() -> str:
    groups = ("model", "bias_benchmark", "steering_method", "optimizer", "reward", "logger", "verb")
    lines = [
        "# Configuration reference",
        "",
        "Generated from the typed options classes (`dso_cli/config/`) by `scripts/config_reference.py`;",
        "a test fails when this page and the classes differ. Every key is set on the command line as",
        "`section.key=value` (`bias.` is short for `bias_benchmark.`); a group option is chosen with",
        "`group=option`. Defaults shown are the classes' own; a preset file (`conf/<group>/<option>.yaml`)",
        "sets only its `_target_`/`name` and what it overrides.",
        "",
        "## Shared by every verb",
        "",
        *_table(_rows(BaseSchema, "", skip=groups)),
        "## Each verb's own keys",
        "",
    ]
    shared = {f.name for f in fields(BaseSchema)}
    for verb, schema in SCHEMAS.items():
        own = tuple(f.name for f in fields(schema) if f.name in shared)
        rows = _rows(schema, "", skip=own)
        if rows:
            lines += [f"### dso {verb}", "", *_table(rows)]
    lines += ["## Config groups", ""]
    for group, title in GROUP_TITLES.items():
        lines += [f"### {title}", ""]
        for option, cls in OPTIONS[group].items():
            identity = ", ".join(f"`{k}`" for k in IDENTITY[group])
            rows = _rows(cls, f"{'bias' if group == 'bias_benchmark' else group}.")
            lines += [f"#### {group}={option}", ""]
            lines += (
                _table(rows)
                if rows
                else ["No options of its own" + (f" (its preset sets {identity})." if identity else "."), ""]
            )
    from dso_cli.config.schema import ModelSchema

    lines += [
        "### model",
        "",
        "Every `conf/model/<name>.yaml` sets `name` and `name_or_path` and overrides some of these.",
        "",
    ]
    lines += _table(_rows(ModelSchema, "model."))
    return "\n".join(lines).rstrip() + "\n"
