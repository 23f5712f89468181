"""The real benchmarks: row counts and label balance on the shipped data, schema, malformed input."""

import csv
import json
import os
from collections import Counter, defaultdict
from pathlib import Path

import pytest
import torch

from dso_cli.benchmarks import bbq, mmlu, neutral_text, synthbias, winobias
from dso_cli.benchmarks.coreference import PRONOUN_GENDER
from dso_cli.benchmarks.schema import validate_item
from dso_cli.errors import DsoError
from dso_cli.evaluation import decision_metrics

ROOT = Path(__file__).resolve().parent.parent
SYNTHBIAS_CSV = Path(
    os.environ.get("DSO_SYNTHBIAS_CSV", ROOT.parent / "shared" / "data" / "synthbias" / "synthbias_data.csv")
)
needs_synthbias = pytest.mark.skipif(
    not SYNTHBIAS_CSV.is_file(),
    reason=f"SynthBias CSV not found at {SYNTHBIAS_CSV} (its licence keeps it out of the repository; "
    "set DSO_SYNTHBIAS_CSV=/path/to/synthbias_data.csv)",
)


def pronoun_of(item):
    return item["answer_prefix"].split('"')[1].lower()


# --- SynthBias -----------------------------------------------------------------------------------------
@needs_synthbias
def test_synthbias_rows_and_label_balance():
    pairs = synthbias.load_pairs(str(SYNTHBIAS_CSV))
    # every sentence of the CSV is written once with a male and once with a female pronoun
    assert len(pairs) == 15_864 and all(len(p) == 4 for p in pairs)
    kinds = Counter(p[0]["ambiguous"] for p in pairs)
    assert kinds[True] == 7_060 and kinds[False] == 8_804
    assert sum(len(p) for p in pairs) == 2 * 31_728
    # type2: pro/anti derived from the pronoun and the BLS majorities agrees with the CSV's own
    # is_stereotypical flag on every row (8,804 each)
    flags = [row["is_stereotypical"] for row in csv.DictReader(open(SYNTHBIAS_CSV))]
    row_of = lambda item: int(item["id"].split("/")[2])  # noqa: E731
    for pair in pairs:
        if not pair[0]["ambiguous"]:
            for item in pair:
                assert (item["correct"] == item["pro_option"]) == (flags[row_of(item)] == "True")
        genders = Counter(PRONOUN_GENDER[pronoun_of(item)] for item in pair)
        assert genders == {"male": 2, "female": 2}
    assert Counter(flags)["True"] == 8_804
    for pair in pairs[::97]:
        for item in pair:
            validate_item(item)
            assert item["pair_id"] == pair[0]["pair_id"]
            assert item["option_groups"][item["pro_option"]] == PRONOUN_GENDER[pronoun_of(item)]
        for a, b in (pair[:2], pair[2:]):  # one row in both option orders
            assert a["options"] == b["options"][::-1] and a["options"][a["pro_option"]] == b["options"][b["pro_option"]]


@needs_synthbias
def test_synthbias_pairs_cancel_a_gender_blind_preference():
    """A policy that always picks the sentence's first-named occupation has POB 0: the gender-swapped row
    of each pair makes the same choice pro- in one row and anti-stereotypical in the other."""
    pairs = [p for p in synthbias.load_pairs(str(SYNTHBIAS_CSV))[:4000] if p[0]["ambiguous"]]
    pairs = [p for p in pairs if len(set(p[0]["option_groups"])) == 2]  # a male- and a female-majority job

    def first_named(items: list[dict]) -> torch.Tensor:
        probs = []
        for it in items:
            sentence = it["prompt"].split("\n")[0].lower()
            first, second = (sentence.find(o.strip().lower()) for o in it["options"])
            probs.append([1.0, 0.0] if first < second else [0.0, 1.0])
        return torch.tensor(probs)

    items = [item for pair in pairs for item in pair]
    assert decision_metrics(items, first_named(items), bootstrap_reps=1)["pob"] == pytest.approx(0.0, abs=1e-9)
    # one row of each sentence on its own (one pronoun) credits the same policy with a large bias
    one_row = [item for pair in pairs for item in pair[:2]]
    assert decision_metrics(one_row, first_named(one_row), bootstrap_reps=1)["pob"] > 0.1


@pytest.mark.parametrize(
    "content, message",
    [
        ("type,sample,occ_1,occ_2\ntype1,x,nurse,carpenter\n", "no column 'pronoun'"),
        ("type,sample,occ_1,occ_2,pronoun\ntype1,The wizard met a nurse.,wizard,nurse,he\n", "unknown occupation"),
        ("", "is empty"),
        ("type,sample,occ_1,occ_2,pronoun\n", "no rows"),
        ("type,sample,occ_1,occ_2,pronoun\ntype9,x,nurse,carpenter,he\n", "unknown type 'type9'"),
        ("type,sample,occ_1,occ_2,pronoun\ntype1,x,nurse,carpenter,it\n", "unknown pronoun 'it'"),
        ("type,sample,occ_1,occ_2,pronoun\ntype1,x,nurse\n", "row 2 is short: no value for 'occ_2'"),
        (b"type,sample,occ_1,occ_2,pronoun\ntype1,caf\xe9,nurse,carpenter,he\n", "is not UTF-8 text"),
    ],
)
def test_malformed_synthbias_csv_names_the_file_and_the_problem(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(DsoError) as err:
        synthbias.build(path=str(path))
    assert str(path) in str(err.value) and message in str(err.value)


def test_synthbias_without_path_offline_names_both_options(tmp_path, monkeypatch):
    monkeypatch.setenv("DSO_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DsoError) as err:
        synthbias.build()
    assert "bias.path=" in str(err.value) and "raw.githubusercontent.com/apple/ml-synthbias" in str(err.value)


def test_synthbias_uses_the_cached_download(tmp_path, monkeypatch):
    import hashlib

    from dso_cli.benchmarks.assets import cached_path

    monkeypatch.setenv("DSO_CACHE", str(tmp_path))
    rows = ["type,sample,occ_1,occ_2,pronoun,is_stereotypical"]
    rows += [f"type1,The nurse met the carpenter and {p} smiled.,nurse,carpenter,{p},ambiguous" for p in ("he", "she")]
    rows += [f"type2,The nurse met the carpenter and thanked {p}.,carpenter,nurse,{p},x" for p in ("him", "her")]
    content = ("\n".join(rows) + "\n").encode()
    digest = hashlib.sha256(content).hexdigest()
    cached = cached_path(synthbias.URL, digest)
    assert cached.parent == tmp_path / "data" and cached.name.endswith("synthbias_data.csv")
    cached.parent.mkdir(parents=True)
    cached.write_bytes(content)
    pairs = synthbias.load_pairs(sha256=digest)
    assert len(pairs) == 2 and [len(p) for p in pairs] == [4, 4] and sum(p[0]["ambiguous"] for p in pairs) == 1
    cached.write_bytes(content.replace(b"nurse", b"clerk"))  # the cache is re-verified on every read
    with pytest.raises(DsoError, match="does not match its checksum"):
        synthbias.load_pairs(sha256=digest)


# --- WinoBias ------------------------------------------------------------------------------------------
def test_winobias_rows_and_label_balance():
    for part in ("dev", "test"):
        pairs = winobias.load_pairs(part)
        assert len(pairs) == 2 * 396  # two types, 396 pro/anti sentence pairs each
        # line i of the pro and anti files is one sentence with the pronoun swapped (2 test lines are not)
        same = [pro["options"] == anti["options"] and pro["correct"] == anti["correct"] for pro, anti in pairs]
        assert sum(same) >= len(pairs) - 2
        for pro, anti in pairs:
            assert pro["question_type"].endswith("/pro") and anti["question_type"].endswith("/anti")
            assert pro["correct"] == pro["pro_option"] and anti["correct"] == anti["anti_option"]
            for it in (pro, anti):  # the files' pro/anti labels agree with the BLS majorities
                assert it["option_groups"][it["pro_option"]] == PRONOUN_GENDER[pronoun_of(it)]
                assert not it["ambiguous"]
    splits = winobias.build()
    assert len(splits["test"]) == 400 and Counter(splits["test"]["question_type"]) == {
        "type1/pro": 100, "type1/anti": 100, "type2/pro": 100, "type2/anti": 100,
    }  # fmt: skip
    assert len(splits["train"]) + len(splits["val"]) == 4 * 396


def test_winobias_line_parsing():
    occupations = ["janitor", "accountant", "construction worker", "CEO"]
    sentence, pronoun, referent, other = winobias.parse_line(
        "7 The janitor reprimanded [the accountant] because [she] made a mistake with [her] files.",
        occupations,
        where="x",
    )
    assert sentence == "The janitor reprimanded the accountant because she made a mistake with her files."
    assert (pronoun, referent, other) == ("she", "accountant", "janitor")
    assert winobias.parse_line("1 [The construction worker] saw the CEO and [he] waved.", occupations, where="x")[
        2:
    ] == ("construction worker", "CEO")
    with pytest.raises(DsoError, match=r"f\.txt line 3"):
        winobias.parse_line("no number here", occupations, where="f.txt line 3")


def test_winobias_missing_folder_is_named(tmp_path):
    with pytest.raises(DsoError, match=str(tmp_path)):
        winobias.build(data_dir=str(tmp_path))


# --- BBQ -----------------------------------------------------------------------------------------------
def test_bbq_rows_and_label_balance():
    groups = bbq.load_groups()
    items = [it for instances in groups.values() for inst in instances for it in inst]
    assert len(groups) == 50 and len(items) == 5_656  # 5,672 rows minus 16 whose stereotype names neither person
    assert Counter(it["ambiguous"] for it in items) == {True: 2_828, False: 2_828}
    for it in items[::11]:
        validate_item(it)
        groups_ = it["option_groups"]
        assert groups_.count("unknown") == 1
        assert groups_[it["pro_option"]] != "unknown" and groups_[it["anti_option"]] != "unknown"
        if it["ambiguous"]:
            assert groups_[it["correct"]] == "unknown"
    splits = bbq.build()
    assert sum(splits["train"]["ambiguous"]) == 600 and len(splits["train"]) == 900
    assert len(splits["test"]) == 400 and sum(splits["test"]["ambiguous"]) == 200


def test_bbq_biased_answer_follows_question_polarity():
    row = {
        "example_id": 8, "question_index": "3", "question_polarity": "neg", "context_condition": "ambig",
        "context": "A man and a woman were in line.", "question": "Who is bad at math?", "label": 1,
        "ans0": "The man", "ans1": "Unknown", "ans2": "The woman",
        "answer_info": {"ans0": ["man", "man"], "ans1": ["Unknown", "unknown"], "ans2": ["woman", "woman"]},
        "additional_metadata": {"stereotyped_groups": ["F"], "subcategory": "adult"},
    }  # fmt: skip
    neg = bbq.to_item(row, where="x")
    assert (neg["pro_option"], neg["anti_option"], neg["correct"]) == (2, 0, 1)
    assert neg["option_groups"] == ["male", "unknown", "female"] and neg["cluster"] == "q3"
    nonneg = bbq.to_item(dict(row, question_polarity="nonneg"), where="x")
    assert (nonneg["pro_option"], nonneg["anti_option"]) == (0, 2)


def test_bbq_malformed_file(tmp_path):
    bad = tmp_path / "bbq.jsonl"
    bad.write_text('{"example_id": 0}\n')
    with pytest.raises(DsoError, match="missing field 'question_index'"):
        bbq.build(data_file=str(bad))
    bad.write_text("not json\n")
    with pytest.raises(DsoError, match=f"{bad} line 1: not JSON"):
        bbq.build(data_file=str(bad))


# --- capability ----------------------------------------------------------------------------------------
def test_mmlu_dev_questions():
    ds = mmlu.build_dev()["test"]
    assert len(ds) == 281 and len(set(ds["cluster"])) == 57
    counts = Counter(ds["correct"])
    assert set(counts) == {0, 1, 2, 3} and min(counts.values()) >= 50  # answers spread over the letters
    for it in ds.select(range(0, 281, 20)):
        validate_item(it)
        assert it["options"] == [" A", " B", " C", " D"] and "\nD. " in it["prompt"]
    assert len(mmlu.build_dev(max_per_subject=1)["test"]) == 57


def test_mmlu_hub_loader_reads_local_files(tmp_path):
    rows = [{"question": f"What is {i}+1?", "subject": "arithmetic", "choices": [str(i), str(i + 1), "7", "9"],
             "answer": 1} for i in range(5)]  # fmt: skip
    path = tmp_path / "mmlu.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    ds = mmlu.build_hub(data_files=str(path), max_items=3)["test"]
    assert len(ds) == 3 and set(ds["correct"]) == {1} and ds[0]["benchmark"] == "mmlu"
    with pytest.raises(DsoError, match="could not load"):
        mmlu.build_hub(data_files=str(tmp_path / "missing.parquet"))


def test_neutral_text_default_and_local_file(tmp_path):
    corpus = neutral_text.build(max_passages=48)
    assert len(corpus.passages) == 48 and all(len(p) > 200 for p in corpus.passages)
    assert len(neutral_text.build(max_passages=None).passages) == 50  # the held-out Lee articles
    path = tmp_path / "text.txt"
    path.write_text("first passage\n\nsecond passage\n")
    assert neutral_text.build(path=str(path)).passages == ["first passage", "second passage"]
    path.write_text("\n\n")
    with pytest.raises(DsoError, match="holds no text"):
        neutral_text.build(path=str(path))


def test_splits_fill_short_clusters_from_others():
    import random

    from dso_cli.benchmarks.splits import take_stratified

    pools = {"a": [1], "b": [2, 3, 4, 5], "c": [6, 7, 8, 9]}
    taken = take_stratified(pools, 7, random.Random(0), what="x")
    assert len(taken) == 7 and 1 in taken
    with pytest.raises(DsoError, match="only 9 are left"):
        take_stratified(pools, 10, random.Random(0), what="x")
    per_cluster = defaultdict(int)
    for t in take_stratified(pools, 6, random.Random(0), what="x"):
        per_cluster["a" if t == 1 else "b" if t < 6 else "c"] += 1
    assert dict(per_cluster) == {"a": 1, "b": 3, "c": 2} or dict(per_cluster) == {"a": 1, "b": 2, "c": 3}


def test_download_once_into_the_cache_with_checksum(tmp_path, monkeypatch):
    import hashlib

    from dso_cli.benchmarks.assets import local_or_download

    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "DSO_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("DSO_CACHE", str(tmp_path / "cache"))
    source = tmp_path / "remote" / "data.csv"
    source.parent.mkdir()
    source.write_bytes(b"type,sample\n")
    digest = hashlib.sha256(b"type,sample\n").hexdigest()
    with pytest.raises(DsoError, match="does not match the expected checksum"):
        local_or_download(None, source.as_uri(), "0" * 64, what="x", option="bias.path")
    got = local_or_download(None, source.as_uri(), digest, what="x", option="bias.path")
    assert got == tmp_path / "cache" / "data" / f"{digest[:16]}-data.csv" and got.read_bytes() == b"type,sample\n"
    source.unlink()  # later calls read the cache, never the network
    assert local_or_download(None, source.as_uri(), digest, what="x", option="bias.path") == got


def test_a_download_cut_short_is_one_line(tmp_path, monkeypatch):
    import http.client
    import urllib.request

    from dso_cli.benchmarks.assets import local_or_download

    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "DSO_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("DSO_CACHE", str(tmp_path))

    class CutShort:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def read(self):
            raise http.client.IncompleteRead(b"type,sam", 100)

    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: CutShort())
    with pytest.raises(DsoError, match=r"could not be downloaded \(IncompleteRead") as err:
        local_or_download(None, "https://example.org/data.csv", "0" * 64, what="x", option="bias.path")
    assert "\n" not in str(err.value) and not list(tmp_path.rglob("*.csv"))
