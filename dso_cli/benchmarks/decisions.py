"""``decisions``: a user's own decision items, from a JSONL, CSV or Parquet file or a hub dataset.

One row per decision item (docs/guides/your-data.md has the schema and an example):

- ``prompt`` (text), ``options`` (two or more texts), ``option_groups`` (the group each option
  holds, of the row's ``attribute``; ``unknown`` for "cannot tell", ``other`` for an option that is no
  person), ``cluster`` (what POB averages over: an occupation, a role, a template, ...): required.
- ``attribute``: the protected attribute the groups belong to (default ``gender``: ``male``,
  ``female``). The built-in ``race`` and ``race_x_gender`` have a fixed vocabulary; any other name
  takes any groups (e.g. three religions). Files written before attributes existed used
  ``attribute`` for the question type; a row without ``question_type`` whose ``attribute`` is no
  built-in attribute and whose groups are gender groups is still read that way.
- ``correct``: the correct option's index; absent or null for an ambiguous item (no right answer
  but "cannot tell", see ``ambiguous``).
- ``stereotyped``: the stereotyped option's index (optional: without it POB compares the groups head
  to head; the stereotype gap and the paper's reward with a direction need it).
  ``anti_stereotyped``: the counter-stereotyped one (default: the other person, with two).
- ``pair_id``: ties the items that counterbalance one another (same decision, persons or option
  order swapped); required for an ambiguous item, and every pair needs at least two items.
- optional: ``id``, ``answer_prefix`` (the answer's start every option continues),
  ``question_type``, ``images`` (paths, relative to the file), ``ambiguous`` (default: no
  ``correct``), ``split`` (train/val/test/...: then the file's own splits are used, on every row).

Every row is checked before any is used; a bad file is refused with the file, line and field of each
bad row, so nothing trains on a half-read file. Without a ``split`` column the splits are made as the
built-in benchmarks make them: per cluster, whole pairs dealt to test and val (seeded), the rest train.
"""

from __future__ import annotations

import csv
import json
import random
from collections import defaultdict
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import datasets

from dso_cli.benchmarks.attributes import DEFAULT_ATTRIBUTE, GENDER, VOCABULARIES, person_groups
from dso_cli.benchmarks.schema import ItemError, splits_to_datasets, validate_item
from dso_cli.benchmarks.splits import deal_per_cluster
from dso_cli.config.fields import make_options
from dso_cli.config.group_schemas import DecisionsOptions
from dso_cli.errors import DsoError

BENCHMARK = "decisions"
REQUIRED = ("prompt", "options", "option_groups", "cluster")
FORMATS = (".jsonl", ".json", ".csv", ".parquet")
SHOWN_ERRORS = 5  # bad rows named in the one-line error (the count says how many more)


class RowError(ValueError):
    """One bad field of one row."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"field {field!r}: {problem}")


def read_rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(where, row)`` for every row of a JSONL/CSV/Parquet file; ``where`` is ``line N`` (``row N``
    for Parquet). A line that is not a JSON object is a bad row, reported with the others."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    yield f"line {number}", {"__error__": f"not JSON ({exc.msg})"}
                    continue
                yield f"line {number}", row if isinstance(row, dict) else {"__error__": "not a JSON object"}
    elif suffix == ".csv":
        with path.open(encoding="utf-8", newline="") as handle:
            for number, row in enumerate(csv.DictReader(handle), 2):  # line 1 is the header
                yield f"line {number}", {k: v for k, v in row.items() if v not in (None, "")}
    elif suffix == ".parquet":
        import pandas as pd

        for number, row in enumerate(pd.read_parquet(path).to_dict("records"), 1):
            yield f"row {number}", row
    else:
        raise DsoError(f"bias.path={path}: unknown format {suffix or '(none)'} (use {', '.join(FORMATS)})")


def _listed(row: Mapping[str, Any], field: str) -> list[Any]:
    """A list field; CSV and Parquet cells may hold it as JSON text (``["a", "b"]``)."""
    value = row[field]
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise RowError(field, 'must be a list (in CSV: JSON text such as ["a", "b"])') from None
    if hasattr(value, "tolist"):  # a Parquet list cell (numpy array)
        value = value.tolist()
    if not isinstance(value, list):
        raise RowError(field, f"must be a list, not {type(value).__name__}")
    return value


def _index(row: Mapping[str, Any], field: str, n: int) -> int | None:
    value = row.get(field)
    if value is None or (isinstance(value, float) and value != value):  # absent, null, or an empty cell
        return None
    try:
        index = int(value)
    except (TypeError, ValueError):
        raise RowError(field, f"must be an option index, not {value!r}") from None
    if index != float(value) or not 0 <= index < n:
        raise RowError(field, f"option index {value} is out of range for {n} options")
    return index


def _flag(row: Mapping[str, Any], field: str, default: bool) -> bool:
    value = row.get(field)
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    if str(value).strip().lower() in ("true", "1", "yes"):
        return True
    if str(value).strip().lower() in ("false", "0", "no"):
        return False
    raise RowError(field, f"must be true or false, not {value!r}")


USER_FIELDS = {"pro_option": "stereotyped", "anti_option": "anti_stereotyped"}
"""The schema's item fields under the names this file format gives them."""


def attribute_fields(row: Mapping[str, Any], groups: list[str]) -> tuple[str, str]:
    """``(attribute, question_type)`` of a row, reading a file written before attributes existed (its
    ``attribute`` was the question type) as it was meant."""
    attribute = str(row.get("attribute") or "")
    question_type = row.get("question_type")
    legacy = attribute not in VOCABULARIES and set(person_groups(groups)) <= set(GENDER)
    if question_type is None and attribute and legacy:
        return DEFAULT_ATTRIBUTE, attribute
    return attribute or DEFAULT_ATTRIBUTE, str(question_type or "")


def to_item(row: Mapping[str, Any], where: str, name: str, base_dir: Path) -> dict[str, Any]:
    """One schema-valid decision item from a row; :class:`RowError` names the first bad field. The
    item invariants are the schema's own (:func:`validate_item`); this adds what a file row can lack."""
    if "__error__" in row:
        raise RowError("row", str(row["__error__"]))
    for field in REQUIRED:
        if field not in row or row[field] is None:
            raise RowError(field, "missing")
    prompt = str(row["prompt"])
    if not prompt.strip():
        raise RowError("prompt", "empty")
    options = [str(o) for o in _listed(row, "options")]
    groups = [str(g) for g in _listed(row, "option_groups")]
    n = len(options)
    attribute, question_type = attribute_fields(row, groups)
    correct = _index(row, "correct", n)
    ambiguous = _flag(row, "ambiguous", correct is None)
    pro = _index(row, "stereotyped", n)
    anti = _index(row, "anti_stereotyped", n)
    pair_id = row.get("pair_id")
    if ambiguous and (pair_id is None or str(pair_id) == ""):
        raise RowError("pair_id", "an ambiguous item needs the pair it counterbalances")
    images = [str(i) for i in _listed(row, "images")] if row.get("images") is not None else []
    resolved = []
    for image in images:
        file = Path(image) if Path(image).is_absolute() else base_dir / image
        if not file.is_file():
            raise RowError("images", f"no such file {image}")
        resolved.append(str(file))
    item_id = str(row.get("id") or f"{name}/{where.replace(' ', '')}")
    item = {
        "id": item_id,
        "benchmark": name,
        "split": str(row.get("split") or ""),
        "prompt": prompt,
        "answer_prefix": str(row.get("answer_prefix") or ""),
        "options": options,
        "option_groups": groups,
        "pro_option": -1 if pro is None else pro,
        "anti_option": -1 if anti is None else anti,
        "correct": -1 if correct is None else correct,
        "ambiguous": ambiguous,
        "cluster": str(row["cluster"]),
        "attribute": attribute,
        "question_type": question_type,
        "pair_id": str(pair_id) if pair_id not in (None, "") else item_id,
        "images": resolved,
    }
    try:
        validate_item(item)
    except ItemError as exc:
        raise RowError(USER_FIELDS.get(exc.field, exc.field), exc.problem) from None
    if pro is not None and anti is None:  # the other person, where there are two
        people = set(person_groups(groups)) - {groups[pro]}
        candidates = [i for i, g in enumerate(groups) if g in people]
        if ambiguous and len(candidates) != 1:
            raise RowError("anti_stereotyped", "cannot be inferred (no single person of another group); set it")
        item["anti_option"] = candidates[0] if len(candidates) == 1 else -1
    if pro is not None and pro == item["anti_option"]:
        raise RowError("anti_stereotyped", "is the stereotyped option itself")
    return item


def read_items(rows: Iterator[tuple[str, dict[str, Any]]], source: str, name: str, base_dir: Path) -> list[dict]:
    """Every row as an item, or one error naming every bad row (and the pairs that miss a twin)."""
    items: list[dict] = []
    errors: list[str] = []
    lines: dict[str, str] = {}  # item id -> where it was read
    for where, row in rows:
        try:
            item = to_item(row, where, name, base_dir)
        except RowError as exc:
            errors.append(f"{where}: {exc}")
            continue
        if item["id"] in lines:
            errors.append(f"{where}: field 'id': {item['id']!r} repeats {lines[item['id']]}")
            continue
        lines[item["id"]] = where
        items.append(item)
    members: dict[str, list[dict]] = defaultdict(list)
    for item in items:
        if item["ambiguous"]:
            members[item["pair_id"]].append(item)
    for pair_id, pair in members.items():
        if len(pair) < 2:
            errors.append(f"{lines[pair[0]['id']]}: field 'pair_id': pair {pair_id!r} has no counterbalanced twin")
        elif len({it["cluster"] for it in pair}) > 1:
            errors.append(f"{lines[pair[1]['id']]}: field 'cluster': pair {pair_id!r} spans several clusters")
    with_split = [it for it in items if it["split"]]
    if with_split and len(with_split) != len(items):
        first = next(lines[it["id"]] for it in items if not it["split"])
        errors.append(f"{first}: field 'split': missing (other rows have one: every row needs it)")
    if errors:
        errors.sort(key=lambda e: int(e.split(":")[0].split()[-1]))  # in file order
        more = f" (and {len(errors) - SHOWN_ERRORS} more)" if len(errors) > SHOWN_ERRORS else ""
        shown = "; ".join(errors[:SHOWN_ERRORS])
        raise DsoError(f"{source}: {len(errors)} bad row(s): {shown}{more}; nothing was read")
    if not items:
        raise DsoError(f"{source}: no decision items")
    return items


def make_splits(items: list[dict], val_pairs: int, test_pairs: int, seed: int) -> dict[str, list[dict]]:
    """Per cluster, whole pairs dealt to test and val (ambiguous and unambiguous pools alike), the rest train."""
    rng = random.Random(seed)
    splits: dict[str, list[dict]] = {"train": [], "val": [], "test": []}
    for ambiguous in (True, False):
        pools: dict[str, dict[str, list[dict]]] = defaultdict(dict)
        for item in items:
            if item["ambiguous"] == ambiguous:
                pools[item["cluster"]].setdefault(item["pair_id"], []).append(item)
        by_cluster = {cluster: list(pairs.values()) for cluster, pairs in pools.items()}
        dealt, left = deal_per_cluster(by_cluster, [("test", test_pairs), ("val", val_pairs)], rng)
        for split in ("test", "val"):
            splits[split] += [item for pair in dealt[split] for item in pair]
        splits["train"] += [item for cluster in sorted(left) for pair in left[cluster] for item in pair]
    return {name: rows for name, rows in splits.items() if rows or name == "train"}


def hub_rows(hub_id: str, split: str, revision: str | None) -> Iterator[tuple[str, dict[str, Any]]]:
    try:
        data = datasets.load_dataset(hub_id, split=split, revision=revision)
    except Exception as exc:  # offline, unknown id or split: one line
        raise DsoError(f"bias.hub_id={hub_id}: cannot load split {split!r} ({str(exc).splitlines()[0]})") from None
    for number, row in enumerate(data, 1):
        yield f"row {number}", dict(row)


def build(path: str | None = None, *, name: str = BENCHMARK, **options: Any) -> datasets.DatasetDict:
    """The decision items of ``path`` (or of the hub dataset ``hub_id``), split as the file says (a
    ``split`` column) or per cluster and pair (seeded); ``options`` are :class:`DecisionsOptions`'."""
    opts = make_options(DecisionsOptions, {**options, "path": path}, "bias")
    if (opts.path is None) == (opts.hub_id is None):
        raise DsoError("bias=decisions needs bias.path=FILE (.jsonl, .csv or .parquet) or bias.hub_id=DATASET")
    if opts.path is not None:
        file = Path(opts.path).expanduser()
        if not file.is_file():
            raise DsoError(f"bias.path={opts.path}: no such file")
        items = read_items(read_rows(file), f"bias.path={opts.path}", name, file.parent)
    else:
        items = read_items(
            hub_rows(str(opts.hub_id), opts.hub_split, opts.hub_revision),
            f"bias.hub_id={opts.hub_id}",
            name,
            Path.cwd(),
        )
    if any(item["split"] for item in items):
        splits: dict[str, list[dict]] = defaultdict(list)
        for item in items:
            splits[item["split"]].append(item)
    else:
        splits = make_splits(items, opts.val_pairs_per_cluster, opts.test_pairs_per_cluster, opts.seed)
    return splits_to_datasets(splits)
