"""Protected attributes and their groups: an item's ``attribute`` (``gender``, ``race``, ...) says which
vocabulary its options' groups come from. The built-in attributes have a fixed vocabulary (checked);
an attribute of a user's own decision file may use any set of groups. ``unknown`` ("can't tell") and
``other`` (an option that is no person of the attribute) are allowed under every attribute."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dso_cli.errors import DsoError

GENDER = ("male", "female")
NAMED_RACE = ("asian", "black", "latino", "white", "arab")
"""The ethnicities of BBQ's first-name vocabulary: those the occupation benchmark can name people by."""
RACE = (*NAMED_RACE, "native_american", "jewish", "roma")
"""Every ethnicity a built-in benchmark asks about (BBQ's Race_ethnicity adds the last three)."""
RACE_X_GENDER = tuple(f"{race}_{gender}" for race in RACE for gender in GENDER)

VOCABULARIES: dict[str, tuple[str, ...]] = {"gender": GENDER, "race": RACE, "race_x_gender": RACE_X_GENDER}
"""The built-in attributes and their groups."""

SPECIAL = ("unknown", "other")
"""Groups every attribute allows: the "can't tell" answer, and an option that denotes no person."""

DEFAULT_ATTRIBUTE = "gender"


def person_groups(groups: Sequence[str]) -> list[str]:
    """The groups of ``groups`` that denote people (``unknown`` and ``other`` left out), in order."""
    return [g for g in groups if g not in SPECIAL]


def unknown_groups(attribute: str, groups: Sequence[str]) -> list[str]:
    """The groups outside ``attribute``'s vocabulary (none for an attribute without a built-in one)."""
    vocabulary = VOCABULARIES.get(attribute)
    if vocabulary is None:
        return []
    return [g for g in groups if g not in vocabulary and g not in SPECIAL]


def attribute_list(value: Any, key: str = "bias.attribute") -> list[str]:
    """The attributes a benchmark's ``attribute`` setting names: one (``race``) or several
    (``[gender,race]``: one benchmark over several attributes), each once."""
    names = [value] if isinstance(value, str) else list(value) if isinstance(value, Sequence) else None
    if not names or not all(isinstance(name, str) and name for name in names):
        raise DsoError(f"{key} must be an attribute or a list of them ([gender,race]), not {value!r}")
    if len(set(names)) != len(names):
        raise DsoError(f"{key} lists an attribute twice: {names}")
    return names
