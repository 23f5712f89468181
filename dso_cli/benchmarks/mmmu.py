"""MMMU (validation split, multiple choice) as decision items: the capability axis for VLMs.

Loaded through ``datasets``: the hub id ``MMMU/MMMU`` (one config per subject) when online, or local
parquet files with the same columns (``id``, ``question``, ``options``, ``answer``, ``image_1`` ...
``image_7``, ``question_type``). Open questions are skipped. The images a question refers to
(``<image 1>`` ...) are written once to the cache and shown in order before the prompt; options are
lettered and scored as the next token, like MMLU.
"""

from __future__ import annotations

import ast
import hashlib
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import datasets

from dso_cli.benchmarks.schema import to_dataset
from dso_cli.config.fields import make_options
from dso_cli.config.group_schemas import MmmuOptions
from dso_cli.errors import DsoError

SUBJECTS = (
    "Accounting", "Agriculture", "Architecture_and_Engineering", "Art", "Art_Theory", "Basic_Medical_Science",
    "Biology", "Chemistry", "Clinical_Medicine", "Computer_Science", "Design",
    "Diagnostics_and_Laboratory_Medicine", "Economics", "Electronics", "Energy_and_Power", "Finance", "Geography",
    "History", "Literature", "Manage", "Marketing", "Materials", "Math", "Mechanical_Engineering", "Music",
    "Pharmacy", "Physics", "Psychology", "Public_Health", "Sociology",
)  # fmt: skip
IMAGE_REF = re.compile(r"<image (\d)>")
LETTERS = "ABCDEFGHIJ"


def build(**options: Any) -> datasets.DatasetDict:
    """MMMU's multiple-choice questions (``test`` split of the returned dict)."""
    opts = make_options(MmmuOptions, options, "capability")
    try:
        if opts.data_files:
            parts = [datasets.load_dataset("parquet", data_files=opts.data_files, split="train")]
        else:
            parts = [
                datasets.load_dataset(opts.path, subject, split=opts.split) for subject in opts.subjects or SUBJECTS
            ]
    except (OSError, ValueError) as exc:
        source = opts.data_files or f"{opts.path} ({opts.split})"
        raise DsoError(f"mmmu: could not load {source}: {str(exc).splitlines()[0]}") from None
    items: list[dict] = []
    for part in parts:
        images = [c for c in part.column_names if c.startswith("image_")]
        part = part.cast(datasets.Features({**part.features, **{c: datasets.Image(decode=False) for c in images}}))
        items += rows_to_items(part, str(opts.data_files or opts.path))
        if opts.max_items is not None and len(items) >= opts.max_items:
            items = items[: opts.max_items]
            break
    if not items:
        raise DsoError("mmmu: no multiple-choice questions were found")
    return datasets.DatasetDict({"test": to_dataset(items)})


def rows_to_items(rows: Iterable[Mapping[str, Any]], where: str) -> list[dict]:
    items = []
    for i, row in enumerate(rows):
        if row.get("question_type", "multiple-choice") != "multiple-choice":
            continue
        missing = [k for k in ("id", "question", "options", "answer") if k not in row]
        if missing:
            raise DsoError(f"{where}: row {i} has no {missing[0]!r} field")
        options = ast.literal_eval(row["options"]) if isinstance(row["options"], str) else list(row["options"])
        if not 2 <= len(options) <= len(LETTERS) or row["answer"] not in LETTERS[: len(options)]:
            continue  # malformed or open-ended in disguise
        text = "\n".join([row["question"], *options])
        order = list(dict.fromkeys(int(k) for k in IMAGE_REF.findall(text)))
        files = [_save(row[f"image_{k}"], f"{row['id']}_{k}") for k in order if row.get(f"image_{k}")]
        refer = {k: f"(image {n})" for n, k in enumerate(order, 1)}

        def numbered(part: str, refer: dict[int, str] = refer) -> str:
            return IMAGE_REF.sub(lambda m: refer.get(int(m.group(1)), m.group(0)), part)

        lines = "\n".join(f"{LETTERS[j]}. {numbered(str(o))}" for j, o in enumerate(options))
        stem = str(row["id"]).rsplit("_", 1)[0]  # "validation_Art_Theory_3" -> "Art_Theory"
        subject = stem.split("_", 1)[1] if "_" in stem else stem
        items.append({
            "id": f"mmmu/{row['id']}", "benchmark": "mmmu", "split": "test",
            "prompt": f"{numbered(row['question']).strip()}\n{lines}\nAnswer with the letter of the correct option.",
            "answer_prefix": "Answer:", "options": [f" {LETTERS[j]}" for j in range(len(options))],
            "option_groups": ["other"] * len(options), "pro_option": -1, "anti_option": -1,
            "correct": LETTERS.index(row["answer"]), "ambiguous": False, "cluster": subject,
            "attribute": "", "question_type": subject, "pair_id": f"mmmu/{row['id']}", "images": files,
        })  # fmt: skip
    return items


def _save(image: Mapping[str, Any], stem: str) -> str:
    """An undecoded image written once to the cache (named by content); returns its path."""
    from dso_cli.benchmarks.assets import cache_image_bytes
    from dso_cli.models.packaged import cache_root

    data = image.get("bytes") or Path(image["path"]).read_bytes()
    suffix = Path(image.get("path") or "x.png").suffix or ".png"
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", stem)
    target = cache_root() / "mmmu" / f"{name}_{hashlib.sha1(data).hexdigest()[:8]}{suffix}"
    return str(cache_image_bytes({"bytes": data}, target))
