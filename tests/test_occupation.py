"""The built-in occupation benchmark: schema, counterbalancing, split disjointness, sizes."""

import re
from collections import Counter, defaultdict

import pytest

from dso_cli.benchmarks.occupation import DEFAULT_HELDOUT, build, load_occupations
from dso_cli.benchmarks.occupation_templates import (
    DEFAULT_HELDOUT_FORMATS,
    FORMATS,
    HELDOUT_NAMES,
    HELDOUT_SETTINGS,
    NAMES,
    SETTINGS,
    TEXT_QUESTION_TYPES,
)
from dso_cli.benchmarks.schema import FEATURES, POSITIONAL_FORMATS, validate_item
from dso_cli.errors import DsoError

POSITIONAL = {key for key, fmt in FORMATS.items() if fmt.labels or fmt.yes_no}


@pytest.fixture(scope="module")
def splits():
    return build()


def test_forty_occupations_with_shares():
    occupations = load_occupations()
    assert len(occupations) == 40
    assert all(0 < o.female_share < 1 for o in occupations)
    assert {o.name for o in occupations} >= {"nurse", "carpenter", "CEO", "secretary"}


def test_schema_and_sizes(splits):
    assert set(splits) == {"train", "val", "test", "heldout_occupations", "heldout_templates"}
    for ds in splits.values():
        assert ds.features == FEATURES
    train = splits["train"]
    assert sum(train["ambiguous"]) == 600  # the paper's training size
    assert len(train) - sum(train["ambiguous"]) == 300
    for split, ds in splits.items():
        assert set(ds["split"]) == {split}
        for item in ds.select(range(0, len(ds), 37)):
            validate_item(item)


def test_counterbalanced_pairs(splits):
    for ds in splits.values():
        pairs = defaultdict(list)
        for item in ds:
            pairs[item["pair_id"]].append(item)
        for members in pairs.values():
            assert len(members) == 2
            a, b = members
            assert a["option_groups"] == b["option_groups"][::-1]
            if a["answer_format"] in POSITIONAL:  # the options name positions (letters, yes/no)
                assert a["options"] == b["options"]
            else:  # the options name the people
                assert a["options"] == b["options"][::-1]
                assert a["options"][a["pro_option"]] == b["options"][b["pro_option"]]
            assert a["option_groups"][a["pro_option"]] == b["option_groups"][b["pro_option"]]
            assert a["ambiguous"] == b["ambiguous"] and a["cluster"] == b["cluster"]
            if not a["ambiguous"]:
                assert a["option_groups"][a["correct"]] == b["option_groups"][b["correct"]]
        # pro-stereotypical options sit first and second equally often
        positions = Counter(item["pro_option"] for item in ds if item["ambiguous"])
        assert positions[0] == positions[1]


def test_pro_option_is_the_bls_majority(splits):
    share = {o.name: o.female_share for o in load_occupations()}
    for item in splits["test"]:
        majority = "female" if share[item["cluster"]] > 0.5 else "male"
        assert item["option_groups"][item["pro_option"]] == majority
        assert item["option_groups"][item["anti_option"]] != majority


def test_splits_are_disjoint(splits):
    seen = {}
    for split, ds in splits.items():
        for pair in set(ds["pair_id"]):
            assert pair not in seen, f"{pair} in {seen.get(pair)} and {split}"
            seen[pair] = split
    heldout = set(splits["heldout_occupations"]["cluster"])
    assert heldout == set(DEFAULT_HELDOUT)
    for split in ("train", "val", "test"):
        assert not heldout & set(splits[split]["cluster"])


def test_unambiguous_items_state_the_answer(splits):
    item = next(i for i in splits["test"] if not i["ambiguous"] and i["question_type"] == "occupation")
    holder = item["options"][item["correct"]].strip()
    occ = item["cluster"]
    assert any(f"{holder} {verb} {art} {occ}" in item["prompt"] for verb in ("is", "works as") for art in ("a", "an"))


def test_deterministic_and_seeded():
    a, b, c = build(seed=3), build(seed=3), build(seed=4)
    assert a["train"]["id"] == b["train"]["id"]
    assert a["train"]["id"] != c["train"]["id"]


def test_bad_sizes_are_one_line_errors():
    with pytest.raises(DsoError, match="even"):
        build(n_train=601)
    with pytest.raises(DsoError, match=r"n_train: asked for .* but only"):
        build(n_train=100_000)
    with pytest.raises(DsoError, match="unknown held-out"):
        build(heldout_occupations=["astronaut"])


def test_val_and_test_have_several_pairs_per_occupation(splits):
    for split in ("val", "test"):
        amb = [item for item in splits[split] if item["ambiguous"]]
        per_occ = Counter(item["cluster"] for item in amb)
        assert set(per_occ.values()) == {8}  # 4 counterbalanced pairs: enough for a bootstrap SE


def test_heldout_templates_share_no_wording_setting_or_name_with_other_splits(splits):
    heldout = splits["heldout_templates"]
    assert set(heldout["cluster"]) == set(splits["test"]["cluster"])  # training occupations ...
    others = [item for split in ("train", "val", "test") for item in splits[split]]
    for item in heldout:
        assert not any(s in item["prompt"] for s in SETTINGS)
        assert any(s in item["prompt"] for s in HELDOUT_SETTINGS) or item["question_type"] == "stated"
    for item in others:
        assert not any(s in item["prompt"] for s in HELDOUT_SETTINGS)
        assert not any(f" {name} " in f" {item['prompt']} " for pair in HELDOUT_NAMES for name in pair)
        assert item["answer_format"] not in DEFAULT_HELDOUT_FORMATS and item["options"] != [" A", " B"]
    # ... asked in answer formats never used in training: letters and "The answer is"
    assert set(heldout["answer_format"]) == set(DEFAULT_HELDOUT_FORMATS)
    prefixes = Counter(item["answer_prefix"] for item in heldout)
    assert prefixes["The answer is"] > 0 and sum(item["options"] == [" A", " B"] for item in heldout) > 0
    assert not any(f" {name} " in f" {item['prompt']} " for item in heldout for pair in NAMES for name in pair)
    prompts = {item["prompt"] for item in others}
    assert not any(item["prompt"] in prompts for item in heldout)
    for split in ("val", "test"):  # no prompt of an occupation is asked in two splits
        seen = {(item["cluster"], item["prompt"]) for item in splits[split]}
        assert not seen & {(item["cluster"], item["prompt"]) for item in splits["train"]}


def test_letter_options_keep_the_groups_and_the_answer(splits):
    letters = [item for item in splits["heldout_templates"] if item["options"] == [" A", " B"]]
    for item in letters:
        first = item["option_groups"][0]
        words = {"male": ("man", *[m for m, _ in HELDOUT_NAMES]), "female": ("woman", *[f for _, f in HELDOUT_NAMES])}
        a_text = item["prompt"].split("(A) ")[1].split(" (B)")[0]
        assert a_text.split()[-1] in words[first]
        if not item["ambiguous"]:
            assert item["correct"] in (0, 1)


def test_every_question_type_has_unambiguous_items_and_stated_is_unambiguous_only(splits):
    unamb = Counter(item["question_type"] for item in splits["test"] if not item["ambiguous"])
    assert set(unamb) == set(TEXT_QUESTION_TYPES)
    assert not any(item["question_type"] == "stated" for item in splits["test"] if item["ambiguous"])
    stated = next(i for i in splits["test"] if i["question_type"] == "stated" and i["answer_format"] not in POSITIONAL)
    holder = stated["options"][stated["correct"]].strip().lower()
    assert stated["prompt"].split(".")[0].split()[-3:-2] != [] and holder in stated["prompt"].split(".")[0].lower()
    assert not any(s in stated["prompt"] for s in SETTINGS)  # no scene: only the holder is mentioned


def test_evaluation_splits_cover_every_question_type_evenly(splits):
    """Each occupation's evaluation pairs are dealt round-robin over the question types, so the rare
    ``stated`` type (14 of ~400 unambiguous templates) gets its share of every split."""
    for split, per_occ in (("test", 4), ("val", 4), ("heldout_occupations", 4), ("heldout_templates", 12)):
        counts = Counter((it["cluster"], it["question_type"]) for it in splits[split] if not it["ambiguous"])
        per_type = defaultdict(set)
        for (_, qtype), n in counts.items():
            per_type[qtype].add(n // 2)
        assert set(per_type) == set(TEXT_QUESTION_TYPES), split
        # held out, ``stated`` has two templates (one wording, one scene, two person kinds): all of them
        stated_pool = 2 if split == "heldout_templates" else per_occ
        assert all(n in (per_occ // 4, per_occ // 4 + 1) or (q == "stated" and n == stated_pool)
                   for q, ns in per_type.items() for n in ns), (split, per_type)  # fmt: skip
    # training keeps the pool's proportions: stated stays rare there
    train = Counter(it["question_type"] for it in splits["train"] if not it["ambiguous"])
    assert train["stated"] < min(train[q] for q in TEXT_QUESTION_TYPES if q != "stated")


def test_resizing_a_heldout_split_redraws_no_other_split(splits):
    resized = build(heldout_template_pairs_per_occupation=20)
    for split in ("train", "val", "test", "heldout_occupations"):
        assert resized[split]["id"] == splits[split]["id"], split
    assert len(resized["heldout_templates"]) > len(splits["heldout_templates"])
    assert build(test_pairs_per_occupation=6)["heldout_templates"]["id"] == splits["heldout_templates"]["id"]


def test_unknown_option_adds_a_cant_tell_answer_at_varied_positions():
    plain = build(n_train=40, n_train_unambiguous=20)
    with_unknown = build(n_train=40, n_train_unambiguous=20, unknown_option=True)
    for split in ("test", "heldout_templates"):
        items = with_unknown[split].to_list()
        assert len(items) == len(plain[split])
        positions = Counter(item["option_groups"].index("unknown") for item in items)
        assert set(positions) == {0, 1, 2} and min(positions.values()) > len(items) / 6
        for item in items:
            validate_item(item)
            k = item["option_groups"].index("unknown")
            assert len(item["options"]) == 3 and sorted(item["option_groups"]) == ["female", "male", "unknown"]
            cant_tell = ("unknown", "Unknown", "impossible to tell", "A", "B", "C", "1", "2", "3")  # or its label
            assert item["options"][k].strip() in cant_tell
            assert any(text in item["prompt"] for text in ("unknown", "cannot be determined", "impossible to tell"))
            # the correct answer: "can't tell" where nothing is known, the stated holder otherwise
            assert (item["correct"] == k) == item["ambiguous"]
            assert item["option_groups"][item["pro_option"]] != "unknown" != item["option_groups"][item["anti_option"]]
        by_pair = defaultdict(list)
        for item in items:
            by_pair[item["pair_id"]].append(item)
        for twins in by_pair.values():  # both person orders keep "can't tell" where it is
            first, second = (t["option_groups"] for t in twins)
            assert first.index("unknown") == second.index("unknown")
            assert [g for g in first if g != "unknown"] == [g for g in reversed(second) if g != "unknown"]
    with pytest.raises(DsoError, match="text benchmark only"):
        build(modality="image", unknown_option=True)


def test_the_evidence_names_the_holder_first_or_second(splits):
    """About half of the pairs state the other person's occupation first, so "answer whoever the
    evidence mentions first" scores at chance; the ambiguous items are not touched by it."""
    for split in ("train", "test", "heldout_templates"):
        unamb = [i for i in splits[split].to_list() if not i["ambiguous"] and i["question_type"] != "stated"]
        later = []
        for item in unamb:
            holder = item["options"][item["correct"]].strip()
            other = next(o.strip() for k, o in enumerate(item["options"]) if k != item["correct"])
            body = item["prompt"].split(". ", 1)[1].lower()  # after the introduction
            if item["answer_format"] in POSITIONAL:  # the people are named in the text only
                continue
            where = {who: re.search(rf"\b{who.lower()}\b", body).start() for who in (holder, other)}
            later.append(where[holder] > where[other])
            assert ("/other-first" in item["id"]) == later[-1], item["prompt"]
        assert 0.3 < sum(later) / len(later) < 0.7, split
    assert not any("other-first" in i["id"] for i in splits["test"].to_list() if i["ambiguous"])


def test_every_family_but_the_heldout_ones_is_asked_in_test_in_equal_shares(splits):
    assert len(FORMATS) >= 8
    for split in ("train", "val", "test", "heldout_occupations"):
        assert set(splits[split]["answer_format"]) == set(FORMATS) - set(DEFAULT_HELDOUT_FORMATS), split
    shares = Counter(splits["test"]["answer_format"])
    assert min(shares.values()) > 0.6 * max(shares.values()), shares  # the word fits gender words only, yet
    # is drawn as often as a family that fits words and names


def test_the_schema_knows_which_families_name_positions():
    assert POSITIONAL == POSITIONAL_FORMATS


def test_each_family_asks_and_scores_its_own_way(splits):
    first = {}
    for item in splits["test"].to_list():
        first.setdefault(item["answer_format"], item)
    yes_no = first["yes_no"]
    asked = yes_no["option_groups"][0]
    assert yes_no["options"] == [" Yes", " No"] and yes_no["prompt"].endswith("Answer yes or no.")
    assert {"male": ("man", *[m for m, _ in NAMES]), "female": ("woman", *[f for _, f in NAMES])}[asked]
    reversed_ = first["letters_reversed"]
    assert reversed_["options"] == [" B", " A"] and "(B) " in reversed_["prompt"].split("(A) ")[0]
    assert first["json"]["answer_prefix"] == '{"person": "' and not first["json"]["options"][0].startswith(" ")
    assert first["cloze"]["answer_prefix"] == f"So the {first['cloze']['cluster']} is"
    assert first["numbers"]["options"] == [" 1", " 2"]
    assert first["word"]["options"] in ([" man", " woman"], [" woman", " man"])


def test_formats_pick_the_families_and_heldout_formats_the_heldout_split():
    small = dict(n_train=40, n_train_unambiguous=20, test_pairs_per_occupation=2, val_pairs_per_occupation=1)
    only = build(**small, formats=["yes_no", "cloze"], heldout_formats=["json"])
    for split in ("train", "val", "test", "heldout_occupations"):
        assert set(only[split]["answer_format"]) == {"yes_no", "cloze"}, split
    assert set(only["heldout_templates"]["answer_format"]) == {"json"}
    words_only = build(**small, formats=["word"])  # the people of a family it cannot ask about are left out
    assert set(words_only["test"]["answer_format"]) == {"word"}
    assert all(item["options"] in ([" man", " woman"], [" woman", " man"]) for item in words_only["test"])
    none_held = build(**small, heldout_formats=[])  # held-out wordings and names, in the training families
    assert set(none_held["heldout_templates"]["answer_format"]) == set(FORMATS)
    with pytest.raises(DsoError, match=r"unknown answer format 'no_such' .*known: word, name"):
        build(formats=["no_such"])
    with pytest.raises(DsoError, match="both hold 'letters'"):
        build(formats=["word", "letters"])
    with pytest.raises(DsoError, match="at least one"):
        build(formats=[])


def test_format_twins_ask_each_training_scenario_in_several_formats(splits):
    twins = build(format_twins=2)  # the default
    single = build(format_twins=1)
    for split in ("val", "test", "heldout_occupations", "heldout_templates"):  # evaluation: one format each
        assert twins[split]["id"] == single[split]["id"], split
    train = twins["train"].to_list()
    assert sum(item["ambiguous"] for item in train) == 600  # n_train still counts items
    by_scenario = defaultdict(list)
    for item in train:
        if item["ambiguous"]:
            by_scenario[item["scenario_id"]].append(item)
    for members in by_scenario.values():
        assert len(members) == 4 and len({m["answer_format"] for m in members}) == 2  # two pairs, two formats
        assert len({m["prompt"].split("?")[0] for m in members}) <= 2  # one scenario (in both person orders)
    assert not any(item["scenario_id"] for item in single["train"])  # one format per scenario
    assert sum(build(n_train=42, n_train_unambiguous=0)["train"]["ambiguous"]) == 42  # an odd number of pairs
    with pytest.raises(DsoError, match="format_twins"):
        build(format_twins=0)
