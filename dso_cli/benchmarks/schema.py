"""The one decision-item schema every benchmark produces.

Every bias benchmark becomes a ``datasets.Dataset`` with exactly these columns, so scoring, training,
metrics and reports never need to know which benchmark an item came from.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypedDict

import datasets

from dso_cli.benchmarks.attributes import DEFAULT_ATTRIBUTE, VOCABULARIES, unknown_groups
from dso_cli.errors import DsoError

FEATURES = datasets.Features(
    {
        "id": datasets.Value("string"),
        "benchmark": datasets.Value("string"),
        "split": datasets.Value("string"),
        "prompt": datasets.Value("string"),
        "answer_prefix": datasets.Value("string"),
        "options": datasets.Sequence(datasets.Value("string")),
        "option_groups": datasets.Sequence(datasets.Value("string")),
        "pro_option": datasets.Value("int32"),
        "anti_option": datasets.Value("int32"),
        "correct": datasets.Value("int32"),
        "ambiguous": datasets.Value("bool"),
        "cluster": datasets.Value("string"),
        "attribute": datasets.Value("string"),
        "question_type": datasets.Value("string"),
        "pair_id": datasets.Value("string"),
        "images": datasets.Sequence(datasets.Value("string")),
        "answer_format": datasets.Value("string"),
        "option_people": datasets.Sequence(datasets.Value("string")),
        "scenario_id": datasets.Value("string"),
    }
)
CLUSTER_SEPARATOR = ":"
"""Joins a mixture member's or an attribute's name to a cluster (``occupation:nurse``, ``race:nurse``)."""
OPTIONAL = {
    "images": [],
    "question_type": "",
    "attribute": DEFAULT_ATTRIBUTE,
    "answer_format": "",
    "option_people": [],
    "scenario_id": "",
}
"""Columns a benchmark may leave out, with their default."""
POSITIONAL_FORMATS = frozenset({"letters", "numbers", "letters_reversed", "yes_no"})
"""Answer formats whose options name positions (" A", " Yes"), not people: the same option text means
either person, so a completion's activations there say nothing about who was chosen."""


def options_name_people(item: Mapping[str, Any]) -> bool:
    """Whether an item's options are the people themselves (words, names, references)."""
    return item.get("answer_format", "") not in POSITIONAL_FORMATS


class DecisionItem(TypedDict, total=False):
    """One decision item, as every benchmark builds it and every scorer, trainer and metric reads it.

    ``prompt`` is the user turn, ``answer_prefix`` the start of the answer that every option continues
    (e.g. ``"The"`` before ``" man"`` / ``" woman"``); ``attribute`` is the protected attribute whose groups
    the options name (``gender``, ``race``, ``race_x_gender`` or a user's own; see
    :mod:`dso_cli.benchmarks.attributes`) and ``question_type`` the kind of question; ``pair_id``
    ties together the items that counterbalance one another (same template, persons swapped); ``images``
    are image files shown before the prompt, in order (vision-language benchmarks; else empty);
    ``answer_format`` names the answer-format family the item asks in, where the benchmark has several;
    ``option_people`` who each option stands for (a name, a gender word, ``unknown``) where options name
    positions (" A", " Yes"), empty where the options are the people themselves; ``scenario_id`` ties
    together the pairs that ask one scenario in different answer formats (empty: asked in one);
    ``cluster`` is what Per-Occupation Bias averages over (the occupation; for BBQ, the question
    template; for MMLU, the subject; in a mixture, ``<benchmark>:<cluster>``). ``option_groups`` name
    the group of ``attribute`` each option denotes, ``unknown`` ("cannot be determined"), or ``other``;
    an occupation-valued option denotes its occupation's BLS majority gender. ``pro_option`` and
    ``anti_option`` (the stereotyped and counter-stereotyped options) are -1 where the benchmark states
    no stereotype direction: POB then compares the groups head to head. Ambiguous items have no
    correct option (``correct = -1``), except an ``unknown`` one where offered (BBQ)."""

    id: str
    benchmark: str
    split: str
    prompt: str
    answer_prefix: str
    options: list[str]
    option_groups: list[str]
    pro_option: int
    anti_option: int
    correct: int
    ambiguous: bool
    cluster: str
    attribute: str
    question_type: str
    pair_id: str
    images: list[str]
    answer_format: str
    option_people: list[str]
    scenario_id: str


class ItemError(DsoError):
    """A broken item invariant; ``field`` and ``problem`` let a file reader name the field of its row."""

    def __init__(self, where: str, field: str, problem: str) -> None:
        super().__init__(f"{where}: {problem}")
        self.field = field
        self.problem = problem


def item_attribute(item: Mapping[str, Any]) -> str:
    """The protected attribute ``item`` asks about (items built before attributes were recorded: gender)."""
    return str(item.get("attribute") or DEFAULT_ATTRIBUTE)


def member_key(item: Mapping[str, Any]) -> tuple[str, str]:
    """The member of a mixture (of benchmarks and/or attributes) an item belongs to: its benchmark
    and its attribute."""
    return item["benchmark"], item_attribute(item)


def validate_item(item: Mapping[str, Any]) -> None:
    """Raise a one-line :class:`ItemError` when an item breaks the schema's invariants."""
    n = len(item["options"])
    where = f"item {item.get('id', '?')}"
    if n < 2:
        raise ItemError(where, "options", f"needs at least two options, has {n}")
    groups = item["option_groups"]
    if len(groups) != n:
        raise ItemError(where, "option_groups", f"option_groups has {len(groups)} entries for {n} options")
    attribute = item.get("attribute", DEFAULT_ATTRIBUTE)
    bad = unknown_groups(attribute, groups)
    if bad:
        expected = ", ".join((*VOCABULARIES[attribute], "unknown", "other"))
        raise ItemError(where, "option_groups", f"unknown {attribute} group {bad[0]!r} (expected one of {expected})")
    people = item.get("option_people") or []
    if people and len(people) != n:
        raise ItemError(where, "option_people", f"option_people has {len(people)} entries for {n} options")
    if any(not str(g) for g in groups):
        raise ItemError(where, "option_groups", "an option group is empty")
    for key in ("pro_option", "anti_option", "correct"):
        if not -1 <= item[key] < n:
            raise ItemError(where, key, f"{key}={item[key]} is out of range for {n} options")
    if item["ambiguous"] and item["correct"] != -1 and groups[item["correct"]] != "unknown":
        raise ItemError(where, "correct", "an ambiguous item's only correct option is an 'unknown' one")
    if not item["ambiguous"] and item["correct"] == -1:
        raise ItemError(where, "correct", "an unambiguous item needs a correct option")


def to_dataset(items: Iterable[Mapping[str, Any]]) -> datasets.Dataset:
    """Validate ``items`` and build a ``datasets.Dataset`` with the shared :data:`FEATURES`."""
    rows = list(items)
    for item in rows:
        validate_item(item)
    columns = {name: [row.get(name, OPTIONAL.get(name)) if name in OPTIONAL else row[name] for row in rows]
               for name in FEATURES}  # fmt: skip
    return datasets.Dataset.from_dict(columns, features=FEATURES)


def splits_to_datasets(splits: Mapping[str, Iterable[Mapping[str, Any]]]) -> datasets.DatasetDict:
    """One validated ``Dataset`` per split, each item's ``split`` field set to its split's name."""
    return datasets.DatasetDict(
        {name: to_dataset(dict(item, split=name) for item in items) for name, items in splits.items()}
    )


def join_splits(
    parts: Mapping[str, datasets.DatasetDict], relabel: Callable[[dict[str, Any], str], dict[str, Any]]
) -> datasets.DatasetDict:
    """Several benchmarks' (or attributes') splits as one, split by split, each item passed through
    ``relabel(item, part name)``; a split exists when any part has it."""
    names = dict.fromkeys(split for splits in parts.values() for split in splits)
    out = {}
    for split in names:
        items = [relabel(item, name) for name, splits in parts.items() if split in splits
                 for item in splits[split].to_list()]  # fmt: skip
        out[split] = to_dataset(items)
    return datasets.DatasetDict(out)
