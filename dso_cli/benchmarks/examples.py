"""The example files (decision data, an lm-eval task), shipped inside the package so that a user who
installed with pip can write them out with ``dso examples`` and run the documented commands on them."""

from __future__ import annotations

from pathlib import Path

from dso_cli.errors import DsoError
from dso_cli.io import atomic_write

SHIPPED = Path(__file__).resolve().parent.parent / "examples"


def example_files(root: Path = SHIPPED) -> list[Path]:
    """Every shipped example file, relative to the examples folder (caches left out)."""
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts)


def write_examples(dest: Path, root: Path = SHIPPED) -> list[Path]:
    """Copy the shipped examples into ``dest``, returning the files written. Files already there with
    the same bytes are left alone; one that differs is refused before anything is written, so a user's
    edited example is never overwritten."""
    files = example_files(root)
    if not files:
        raise DsoError(f"no example files found in {root} (a broken installation: reinstall dso-cli)")
    changed = [f for f in files if (dest / f).exists() and (dest / f).read_bytes() != (root / f).read_bytes()]
    if changed:
        raise DsoError(f"{dest / changed[0]} exists and differs from the shipped example; move it away first")
    written = []
    for rel in files:
        if (dest / rel).exists():
            continue
        atomic_write(dest / rel, lambda tmp, rel=rel: tmp.write_bytes((root / rel).read_bytes()))
        written.append(dest / rel)
    return written
