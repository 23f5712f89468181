"""``synthbias``: the DSO paper's LLM coreference data (Apple's SynthBias, CC BY-NC-ND 4.0).

Each row is a sentence with two occupations and a pronoun. ``type1`` rows are ambiguous (the pronoun
could refer to either occupation: the fair policy is 50/50); ``type2`` rows are unambiguous (``occ_1``
is the referent). Every row becomes one counterbalanced pair: the two occupations offered in both
orders. The licence forbids modified copies, so the CSV is read from ``path`` or downloaded once,
unchanged, from the authors' repository into the cache.
"""

from __future__ import annotations

import random
from collections import defaultdict

import datasets

from dso_cli.benchmarks.assets import local_or_download
from dso_cli.benchmarks.coreference import majority_gender, pronoun_gender, pronoun_prompt, read_csv
from dso_cli.benchmarks.schema import splits_to_datasets
from dso_cli.benchmarks.splits import deal_per_cluster, take_stratified
from dso_cli.errors import DsoError

BENCHMARK = "synthbias"
URL = (
    "https://raw.githubusercontent.com/apple/ml-synthbias/"
    "6db30ffb573178f578df60c5a604a205e47f8d56/data/synthbias_data.csv"
)
SHA256 = "6bf346256a12eeb959dfbe610948694e8da26c74306bb202c2f6cd177af84588"
COLUMNS = ("type", "sample", "occ_1", "occ_2", "pronoun")
KINDS = {"type1": True, "type2": False}  # type -> ambiguous


def _pair(row: dict[str, str], index: int, majority: dict[str, str], where: str) -> list[dict]:
    """Both option orders of one row."""
    ambiguous = KINDS[row["type"]]
    occ_1, occ_2, pronoun = row["occ_1"].strip(), row["occ_2"].strip(), row["pronoun"].strip()
    gender = pronoun_gender(pronoun, where=where)
    pair_id = f"{BENCHMARK}/{row['type']}/{index}"
    items = []
    for order in ((occ_1, occ_2), (occ_2, occ_1)):
        prompt, prefix, options = pronoun_prompt(row["sample"].strip(), pronoun, order)
        groups = [majority[o] for o in order]
        pro = groups.index(gender) if groups.count(gender) == 1 else -1
        items.append(
            {
                "id": f"{pair_id}/{'12' if order[0] == occ_1 else '21'}",
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
                "occupation": occ_1,
                "attribute": pronoun.lower(),
                "pair_id": pair_id,
            }
        )
    return items


def load_pairs(path: str | None = None, url: str = URL, sha256: str | None = SHA256) -> list[list[dict]]:
    """Every row of the CSV as a counterbalanced pair of items (schema-valid, split unset)."""
    csv_path = local_or_download(path, url, sha256, what="synthbias", option="bias.path")
    rows = read_csv(csv_path, COLUMNS, what="synthbias")
    majority = majority_gender()
    pairs = []
    for i, row in enumerate(rows):
        where = f"synthbias: {csv_path} row {i + 2}"
        if row["type"] not in KINDS:
            raise DsoError(f"{where}: unknown type {row['type']!r} (expected type1 or type2)")
        for key in ("occ_1", "occ_2"):
            if row[key].strip() not in majority:
                raise DsoError(f"{where}: unknown occupation {row[key]!r} (not one of the 40 BLS occupations)")
        pairs.append(_pair(row, i, majority, where))
    return pairs


def build(
    path: str | None = None,
    n_train: int = 600,
    n_train_unambiguous: int = 300,
    val_pairs_per_occupation: int = 1,
    test_pairs_per_occupation: int = 2,
    seed: int = 0,
    url: str = URL,
    sha256: str | None = SHA256,
    **_: object,
) -> datasets.DatasetDict:
    """Train/val/test stratified by occupation (``occ_1``); sizes count items (two per row).

    ``val`` and ``test`` take the given number of rows of each type per occupation; ``train`` draws
    ``n_train`` ambiguous items (the paper's 600) and ``n_train_unambiguous`` unambiguous ones from
    the rest, spread evenly over the occupations.
    """
    if n_train % 2 or n_train_unambiguous % 2:
        raise DsoError("synthbias: n_train and n_train_unambiguous must be even (items come in pairs)")
    pools: dict[bool, dict[str, list]] = {True: defaultdict(list), False: defaultdict(list)}
    for pair in load_pairs(path, url, sha256):
        pools[pair[0]["ambiguous"]][pair[0]["occupation"]].append(pair)
    rng = random.Random(seed)
    splits: dict[str, list] = {"train": [], "val": [], "test": []}
    for ambiguous, n_items in ((True, n_train), (False, n_train_unambiguous)):
        dealt, left = deal_per_cluster(
            pools[ambiguous], [("test", test_pairs_per_occupation), ("val", val_pairs_per_occupation)], rng
        )
        splits["test"] += dealt["test"]
        splits["val"] += dealt["val"]
        kind = "n_train" if ambiguous else "n_train_unambiguous"
        splits["train"] += take_stratified(left, n_items // 2, rng, what=f"synthbias {kind}")
    return splits_to_datasets({name: [item for pair in pairs for item in pair] for name, pairs in splits.items()})
