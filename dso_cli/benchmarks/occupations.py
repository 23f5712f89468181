"""The occupations of the ``occupation`` benchmark (the 40 of WinoBias with their US BLS female share, which
sets each one's stereotypical gender), shared by its text and image versions."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from importlib import resources

BENCHMARK = "occupation"
SPLITS = ("train", "val", "test", "heldout_occupations")
TEXT_SPLITS = (*SPLITS, "heldout_templates")


@dataclass(frozen=True)
class Occupation:
    name: str
    female_share: float

    @property
    def majority(self) -> str:
        return "female" if self.female_share > 0.5 else "male"


def load_occupations() -> list[Occupation]:
    """The 40 WinoBias occupations with their US BLS female share, sorted by that share."""
    text = resources.files("dso_cli.benchmarks").joinpath("data/occupations.csv").read_text()
    rows = csv.DictReader(text.splitlines())
    occupations = [Occupation(r["occupation"], float(r["female_share"])) for r in rows]
    return sorted(occupations, key=lambda o: o.female_share)
