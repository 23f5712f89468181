"""``synthbias``: the DSO paper's LLM coreference data (Apple's SynthBias, CC BY-NC-ND 4.0).

Each row is a sentence with two occupations and a pronoun. ``type1`` rows are ambiguous (the pronoun
could refer to either occupation: the fair policy is 50/50); ``type2`` rows are unambiguous (``occ_1``
is the referent). The data set writes every sentence twice, once with a male and once with a female
pronoun; those rows, each with the two occupations offered in both orders, form one counterbalanced
pair (four items). Pairing the gender-swapped rows is what makes POB measure gender: a preference for
the sentence's subject, or for the first-named occupation, favours the pro-stereotypical option in
one row of the pair and the anti-stereotypical one in the other, and cancels. The licence forbids
modified copies, so the CSV is read from ``path`` or downloaded once, unchanged, from the authors'
repository into the cache; the rows are only grouped in memory.
"""

from __future__ import annotations

import random
import re
from collections import defaultdict
from typing import Any

import datasets

from dso_cli.benchmarks.assets import local_or_download
from dso_cli.benchmarks.coreference import majority_gender, pronoun_gender, pronoun_prompt, read_csv
from dso_cli.benchmarks.schema import splits_to_datasets
from dso_cli.benchmarks.splits import deal_per_cluster, take_stratified
from dso_cli.config.fields import make_options
from dso_cli.config.group_schemas import SynthBiasOptions
from dso_cli.errors import DsoError

BENCHMARK = "synthbias"
URL = SynthBiasOptions.url  # pinned to a commit, checked by its sha256 (the options class holds both)
SHA256 = SynthBiasOptions.sha256
COLUMNS = ("type", "sample", "occ_1", "occ_2", "pronoun")
KINDS = {"type1": True, "type2": False}  # type -> ambiguous
PAIR_ITEMS = 4  # two pronoun genders x two option orders
PRONOUNS = re.compile(r"\b(he|she|his|her|hers|him|himself|herself)\b", re.IGNORECASE)


def template_key(row: dict[str, str]) -> tuple[str, ...]:
    """What the gender-swapped versions of one sentence share: type, occupations, the pronoun-blind text."""
    masked = PRONOUNS.sub("<pronoun>", " ".join(row["sample"].split())).lower()
    return row["type"], row["occ_1"].strip(), row["occ_2"].strip(), masked


def _row_items(row: dict[str, str], index: int, pair_id: str, majority: dict[str, str], where: str) -> list[dict]:
    """Both option orders of one row."""
    ambiguous = KINDS[row["type"]]
    occ_1, occ_2, pronoun = row["occ_1"].strip(), row["occ_2"].strip(), row["pronoun"].strip()
    gender = pronoun_gender(pronoun, where=where)
    items = []
    for order in ((occ_1, occ_2), (occ_2, occ_1)):
        prompt, prefix, options = pronoun_prompt(row["sample"].strip(), pronoun, order)
        groups = [majority[o] for o in order]
        pro = groups.index(gender) if groups.count(gender) == 1 else -1
        items.append(
            {
                "id": f"{BENCHMARK}/{row['type']}/{index}/{'12' if order[0] == occ_1 else '21'}",
                "benchmark": BENCHMARK,
                "split": "",
                "prompt": prompt,
                "answer_prefix": prefix,
                "options": options,
                "option_groups": groups,
                "pro_option": pro,
                "anti_option": -1 if pro == -1 else 1 - pro,
                "correct": -1 if ambiguous else order.index(occ_1),
                "ambiguous": ambiguous,
                "cluster": occ_1,
                "attribute": "gender",
                "question_type": pronoun.lower(),
                "pair_id": pair_id,
            }
        )
    return items


def load_pairs(path: str | None = None, url: str = URL, sha256: str | None = SHA256) -> list[list[dict]]:
    """The CSV's sentences as counterbalanced pairs: the rows of one gender-swapped sentence, each in both
    option orders (schema-valid, split unset). A sentence written with one gender only is a pair of two."""
    csv_path = local_or_download(path, url, sha256, what="synthbias", option="bias.path")
    rows = read_csv(csv_path, COLUMNS, what="synthbias")
    majority = majority_gender()
    pairs: dict[tuple[str, ...], list[dict]] = {}
    for i, row in enumerate(rows):
        where = f"synthbias: {csv_path} row {i + 2}"
        if row["type"] not in KINDS:
            raise DsoError(f"{where}: unknown type {row['type']!r} (expected type1 or type2)")
        for key in ("occ_1", "occ_2"):
            if row[key].strip() not in majority:
                raise DsoError(f"{where}: unknown occupation {row[key]!r} (not one of the 40 BLS occupations)")
        pair = pairs.setdefault(template_key(row), [])
        pair_id = pair[0]["pair_id"] if pair else f"{BENCHMARK}/{row['type']}/{i}"
        pair += _row_items(row, i, pair_id, majority, where)
    return list(pairs.values())


def build(**options: Any) -> datasets.DatasetDict:
    """Train/val/test stratified by occupation (``occ_1``), whole gender-swapped pairs in one split.

    ``val`` and ``test`` take the given number of pairs (sentences, four items each) of each type per
    occupation; ``train`` draws ``n_train`` ambiguous items (the paper's 600) and
    ``n_train_unambiguous`` unambiguous ones from the rest, spread evenly over the occupations.
    """
    opts = make_options(SynthBiasOptions, options, "bias")
    if opts.n_train % PAIR_ITEMS or opts.n_train_unambiguous % PAIR_ITEMS:
        raise DsoError(
            f"synthbias: n_train and n_train_unambiguous must be multiples of {PAIR_ITEMS} "
            "(a pair is a sentence with a male and a female pronoun, each in both option orders)"
        )
    pools: dict[bool, dict[str, list]] = {True: defaultdict(list), False: defaultdict(list)}
    for pair in load_pairs(opts.path, opts.url, opts.sha256):
        pools[pair[0]["ambiguous"]][pair[0]["cluster"]].append(pair)
    rng = random.Random(opts.seed)
    splits: dict[str, list] = {"train": [], "val": [], "test": []}
    for ambiguous, n_items in ((True, opts.n_train), (False, opts.n_train_unambiguous)):
        dealt, left = deal_per_cluster(
            pools[ambiguous], [("test", opts.test_pairs_per_occupation), ("val", opts.val_pairs_per_occupation)], rng
        )
        splits["test"] += dealt["test"]
        splits["val"] += dealt["val"]
        kind = "n_train" if ambiguous else "n_train_unambiguous"
        splits["train"] += take_stratified(left, n_items // PAIR_ITEMS, rng, what=f"synthbias {kind}")
    return splits_to_datasets({name: [item for pair in pairs for item in pair] for name, pairs in splits.items()})
