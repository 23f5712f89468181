"""The results tables of the docs, regenerated from the CSVs kept under ``docs/results/data/``.

A table is two files: ``NAME.csv`` (the measured rows, as a run wrote them or as they were measured) and
``NAME.yaml`` (where, when and how they were measured: commit, date, command, seeds, hardware; and which
columns the page shows). A page (any ``docs/**/*.md`` or ``README.md``) holds the table between
``<!-- results:NAME -->`` and ``<!-- /results:NAME -->``; this script rewrites what is between, with a
provenance line under the table, so a number on a page cannot drift from its data.

    python scripts/results_tables.py            # rewrite every page's tables (make docs runs it)
    python scripts/results_tables.py --check    # exit 1 when a page differs from its data
    python scripts/results_tables.py collect NAME RUN/sweep.csv --where split=test --command "make demo"
                                                # take a run's rows as NAME.csv; stamp commit, date, hardware
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import re
import string
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "docs" / "results" / "data"
PROVENANCE = ("commit", "date", "command", "seeds", "hardware")
BLOCK = re.compile(r"(<!-- results:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /results:(?P=name) -->)", re.S)


class _CellFormatter(string.Formatter):
    """``str.format`` whose floats print without a leading zero (``.199``, the docs' style, unless
    ``leading_zero``), whose text escapes the table's ``|``, and whose missing values (NaN, empty) make
    the whole cell empty."""

    class Missing(Exception):
        """A field the cell needs was not measured for this row."""

    def __init__(self, leading_zero: bool = False) -> None:
        self.leading_zero = leading_zero

    def format_field(self, value: Any, format_spec: str) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)) or value == "":
            raise self.Missing
        text = super().format_field(value, format_spec)
        if isinstance(value, str):
            return text.replace("|", "\\|")
        return text if self.leading_zero or not isinstance(value, float) else re.sub(r"^(-?)0\.(\d)", r"\1.\2", text)


def format_cell(
    template: str, row: Mapping[str, Any], se: str | None = None, leading_zero: bool = False, se_spec: str = ".3f"
) -> str:
    """One cell: ``template`` formatted with the row's fields, then `` ± SE`` when ``se`` is measured."""
    formatter = _CellFormatter(leading_zero)
    try:
        text = formatter.format(template, **row)
    except _CellFormatter.Missing:
        return ""
    if se:
        try:
            text += formatter.format(f" ± {{se:{se_spec}}}", se=row.get(se))
        except _CellFormatter.Missing:
            pass
    return text


def load_table(name: str, data: Path = DATA) -> tuple[dict[str, Any], pd.DataFrame]:
    """A table's metadata and rows, with ``COLUMN_ratio`` added for each of ``ratios``: the column over
    its value on the first row (the base model's, in a sweep). A table with ``view_of: OTHER`` shows
    other columns of OTHER's rows, with OTHER's provenance; ``where: {column: value}`` keeps the rows
    whose columns hold those values."""
    meta = yaml.safe_load((data / f"{name}.yaml").read_text())
    source = meta.get("view_of", name)
    if source != name:
        meta = {**yaml.safe_load((data / f"{source}.yaml").read_text()), "columns": meta.get("columns")}
    missing = [key for key in (*PROVENANCE, "columns") if not meta.get(key)]
    if missing:
        raise ValueError(f"{data / name}.yaml has no {', '.join(missing)}")
    rows = pd.read_csv(data / f"{source}.csv")
    where = yaml.safe_load((data / f"{name}.yaml").read_text()).get("where") or {}
    for column, value in where.items():
        rows = rows[rows[column].astype(str) == str(value)]
    meta["source"] = source
    for column in meta.get("ratios", []):
        rows[f"{column}_ratio"] = rows[column] / rows[column].iloc[0]
    return meta, rows


def render_table(name: str, page: Path, data: Path = DATA) -> str:
    """The Markdown of table ``name`` as it appears on ``page``: the table, then its provenance."""
    meta, rows = load_table(name, data)
    columns = meta["columns"]
    lines = ["| " + " | ".join(c["header"] for c in columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for record in rows.to_dict("records"):
        cells = [
            format_cell(c["cell"], record, c.get("se"), c.get("leading_zero", False), c.get("se_spec", ".3f"))
            for c in columns
        ]
        lines.append("| " + " | ".join(cells) + " |")
    source = meta["source"]
    link = os.path.relpath(data / f"{source}.csv", page.parent)
    lines += [
        "",
        f"*Commit {meta['commit']} ({meta['date']}); command: `{meta['command']}`; seeds: {meta['seeds']}; "
        f"hardware: {meta['hardware']}. Data: [{source}.csv]({link}), rendered by `scripts/results_tables.py`.*",
    ]
    return "\n".join(lines) + "\n"


def pages(root: Path = ROOT) -> list[Path]:
    """Every page that may hold a results table."""
    return [root / "README.md", *sorted((root / "docs").rglob("*.md"))]


def rendered(page: Path, data: Path = DATA) -> str:
    """``page``'s text with each of its results blocks regenerated."""
    return BLOCK.sub(lambda m: m.group(1) + render_table(m.group("name"), page, data) + m.group(4), page.read_text())


def git_commit() -> str:
    """The checkout's short commit, marked when tracked files differ from it."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True
    )
    return f"`{commit.stdout.strip()}`" + (" with uncommitted changes" if dirty.stdout.strip() else "")


def run_provenance(source: Path) -> dict[str, str]:
    """Commit, hardware and seed as the run recorded them beside ``source`` (the verb's own
    ``<verb>_env.json``, else the run's ``env.json``; ``config.yaml``), so a table collected later, or
    elsewhere, still names where it was measured."""
    found: dict[str, str] = {}
    run_dir = source.parent
    envs = [run_dir / "env.json", run_dir / f"{source.stem}_env.json"]  # the verb's own wins
    env = {key: value for path in envs if path.exists() for key, value in json.loads(path.read_text()).items()}
    config_path = run_dir / "config.yaml"
    if env:
        if env.get("git_commit"):
            commit, dirty = env["git_commit"].removesuffix("+dirty"), env["git_commit"].endswith("+dirty")
            found["commit"] = f"`{commit[:7]}`" + (" with uncommitted changes" if dirty else "")
        arch = re.search(r"x86_64|aarch64|arm64|ppc64le", env.get("platform", ""))
        threads = env.get("torch_threads", "?")
        cpu = f"CPU ({arch.group(0) if arch else 'unknown architecture'}), {threads} torch threads"
        device = env.get("gpu") or cpu
        torch_version = env.get("packages", {}).get("torch", "?")
        dtype = str(env.get("dtype") or "").removeprefix("torch.")
        found["hardware"] = ", ".join(part for part in (device, dtype, f"torch {torch_version}") if part)
    if config_path.exists():
        seed = (yaml.safe_load(config_path.read_text()) or {}).get("seed")
        if seed is not None:
            found["seeds"] = f"seed={seed} (training, and the bootstrap of the SEs over counterbalanced pairs)"
    return found


def this_machine() -> str:
    """This machine in a few words, when the run recorded none."""
    return f"{os.cpu_count()} CPU cores ({platform.machine()})"


def collect(name: str, source: Path, where: list[str], command: str, seeds: str | None, data: Path = DATA) -> Path:
    """Copy ``source``'s rows matching every ``key=value`` of ``where`` to ``NAME.csv`` and stamp the
    metadata's provenance: the commit, hardware and seed the run recorded beside ``source`` (else this
    checkout's commit and machine), today's date and ``command``."""
    rows = pd.read_csv(source)
    for condition in where:
        key, _, value = condition.partition("=")
        if key not in rows:
            raise SystemExit(f"results_tables: error: {source} has no column {key!r}")
        rows = rows[rows[key].astype(str) == value]
    if rows.empty:
        raise SystemExit(f"results_tables: error: no row of {source} matches {' '.join(where)}")
    meta_path = data / f"{name}.yaml"
    meta = yaml.safe_load(meta_path.read_text()) if meta_path.exists() else {"columns": []}
    meta.update(commit=git_commit(), hardware=this_machine())
    meta.update(run_provenance(source))
    meta.update(date=datetime.date.today().isoformat(), command=command)
    if seeds:
        meta["seeds"] = seeds
    data.mkdir(parents=True, exist_ok=True)
    rows.to_csv(data / f"{name}.csv", index=False)
    meta_path.write_text(yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, width=110))
    return data / f"{name}.csv"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when a page differs from its data")
    sub = parser.add_subparsers(dest="verb")
    take = sub.add_parser("collect", help="take a run's result rows as a table's data")
    take.add_argument("name")
    take.add_argument("source", type=Path)
    take.add_argument("--where", action="append", default=[], help="KEY=VALUE a row must match (repeatable)")
    take.add_argument("--command", required=True, help="the command that produced the source")
    take.add_argument("--seeds", help="the seeds of the run (kept from the metadata when omitted)")
    args = parser.parse_args(argv)
    if args.verb == "collect":
        print(f"wrote {collect(args.name, args.source, args.where, args.command, args.seeds)}")
        return 0
    stale = []
    for page in pages():
        text = rendered(page)
        if text != page.read_text():
            stale.append(page.relative_to(ROOT))
            if not args.check:
                page.write_text(text)
    if args.check and stale:
        print(
            f"results tables out of date in {', '.join(map(str, stale))}: run scripts/results_tables.py",
            file=sys.stderr,
        )
        return 1
    print(f"results tables: {len(stale)} page(s) {'stale' if args.check else 'rewritten'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
