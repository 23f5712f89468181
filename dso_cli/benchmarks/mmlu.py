"""MMLU as decision items: four lettered options, the policy is the next-token distribution over A-D.

``mmlu_dev`` reads the 5-per-subject dev questions (with answers) from the chain-of-thought few-shot
prompts inside the ``lm-eval`` wheel, fully offline. ``mmlu`` loads the full benchmark through
``datasets`` (the hub id ``cais/mmlu`` when online, or local parquet/JSON/CSV files with the same
columns: question, subject, choices, answer).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import datasets

from dso_cli.benchmarks.assets import wheel_file
from dso_cli.benchmarks.schema import to_dataset
from dso_cli.config.fields import make_options
from dso_cli.config.group_schemas import MmluDevOptions, MmluOptions
from dso_cli.errors import DsoError

LETTERS = ("A", "B", "C", "D")
DEV_FILE = "tasks/mmlu/flan_cot_fewshot/_cot_prompts.json"
OPTIONS_LINE = re.compile(r"\n\(A\) (.*?)\s\(B\) (.*?)\s\(C\) (.*?)\s\(D\) (.*?)\nA: ", re.S)
ANSWER = re.compile(r"The answer is \(([ABCD])\)")


def mc_item(benchmark: str, index: int, subject: str, question: str, choices: Sequence[str], answer: int) -> dict:
    subject_name = subject.replace("_", " ")
    options = "\n".join(f"{letter}. {choice}" for letter, choice in zip(LETTERS, choices, strict=True))
    return {
        "id": f"{benchmark}/{subject}/{index}",
        "benchmark": benchmark,
        "split": "test",
        "prompt": (
            f"The following is a multiple choice question about {subject_name}.\n\n"
            f"{question.strip()}\n{options}\nAnswer with the letter of the correct option."
        ),
        "answer_prefix": "Answer:",
        "options": [f" {letter}" for letter in LETTERS],
        "option_groups": ["other"] * 4,
        "pro_option": -1,
        "anti_option": -1,
        "correct": answer,
        "ambiguous": False,
        "cluster": subject,
        "attribute": "",
        "question_type": subject,
        "pair_id": f"{benchmark}/{subject}/{index}",
    }


def parse_cot_prompt(subject: str, text: str) -> list[tuple[str, list[str], int]]:
    """(question, four choices, answer index) of each worked example in one subject's prompt."""
    examples = []
    for block in text.split("\n\nQ: ")[1:]:
        match = OPTIONS_LINE.search("\n" + block if block.startswith("(A)") else block)
        answer = ANSWER.search(block)
        if not match or not answer:
            continue
        question = block[: match.start()].strip()
        examples.append((question, [c.strip() for c in match.groups()], LETTERS.index(answer.group(1))))
    if not examples:
        raise DsoError(f"mmlu_dev: no questions could be read for subject {subject!r}")
    return examples


def build_dev(**options: Any) -> datasets.DatasetDict:
    """The MMLU dev questions of all 57 subjects (``test`` split of the returned dict)."""
    opts = make_options(MmluDevOptions, options, "capability")
    path = wheel_file("lm_eval", DEV_FILE, pip_name="lm-eval", what="mmlu_dev")
    prompts = json.loads(path.read_text(encoding="utf-8"))
    items = []
    for subject in sorted(prompts):
        for i, (question, choices, answer) in enumerate(parse_cot_prompt(subject, prompts[subject])):
            if opts.max_per_subject is None or i < opts.max_per_subject:
                items.append(mc_item("mmlu_dev", i, subject, question, choices, answer))
    return datasets.DatasetDict({"test": to_dataset(items)})


def rows_to_items(rows: Iterable[Mapping[str, Any]], benchmark: str, where: str) -> list[dict]:
    items = []
    for i, row in enumerate(rows):
        missing = [k for k in ("question", "subject", "choices", "answer") if k not in row]
        if missing:
            raise DsoError(f"{where}: row {i} has no {missing[0]!r} field")
        choices, answer = list(row["choices"]), row["answer"]
        answer = LETTERS.index(answer) if isinstance(answer, str) else int(answer)
        if len(choices) != 4:
            raise DsoError(f"{where}: row {i} has {len(choices)} choices, expected 4")
        items.append(mc_item(benchmark, i, row["subject"], row["question"], choices, answer))
    return items


def build_hub(**options: Any) -> datasets.DatasetDict:
    """Full MMLU via ``datasets``: a hub id, or local files when ``data_files`` is set."""
    opts = make_options(MmluOptions, options, "capability")
    try:
        if opts.data_files:
            kind = str(opts.data_files if isinstance(opts.data_files, str) else opts.data_files[0]).rsplit(".", 1)[-1]
            builder = {"jsonl": "json", "parquet": "parquet", "csv": "csv", "json": "json"}.get(kind, "json")
            ds = datasets.load_dataset(builder, data_files=opts.data_files, split="train")
        else:
            ds = datasets.load_dataset(opts.path, opts.subset, split=opts.split)
    except (FileNotFoundError, ConnectionError, ValueError, OSError) as exc:
        source = opts.data_files or f"{opts.path} ({opts.subset}, {opts.split})"
        raise DsoError(f"mmlu: could not load {source}: {str(exc).splitlines()[0]}") from None
    if opts.max_items is not None and len(ds) > opts.max_items:
        ds = ds.shuffle(seed=opts.seed).select(range(opts.max_items))
    return datasets.DatasetDict({"test": to_dataset(rows_to_items(ds, "mmlu", str(opts.data_files or opts.path)))})
