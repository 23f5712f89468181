"""The built-in occupation benchmark: schema, counterbalancing, split disjointness, sizes."""

from collections import Counter, defaultdict

import pytest

from dso_cli.benchmarks.occupation import DEFAULT_HELDOUT, build, load_occupations
from dso_cli.benchmarks.schema import FEATURES, validate_item
from dso_cli.errors import DsoError


@pytest.fixture(scope="module")
def splits():
    return build()


def test_forty_occupations_with_shares():
    occupations = load_occupations()
    assert len(occupations) == 40
    assert all(0 < o.female_share < 1 for o in occupations)
    assert {o.name for o in occupations} >= {"nurse", "carpenter", "CEO", "secretary"}


def test_schema_and_sizes(splits):
    assert set(splits) == {"train", "val", "test", "heldout_occupations"}
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
            assert a["options"] == b["options"][::-1]
            assert a["option_groups"] == b["option_groups"][::-1]
            assert a["options"][a["pro_option"]] == b["options"][b["pro_option"]]
            assert a["ambiguous"] == b["ambiguous"] and a["occupation"] == b["occupation"]
            if not a["ambiguous"]:
                assert a["options"][a["correct"]] == b["options"][b["correct"]]
        # pro-stereotypical options sit first and second equally often
        positions = Counter(item["pro_option"] for item in ds if item["ambiguous"])
        assert positions[0] == positions[1]


def test_pro_option_is_the_bls_majority(splits):
    share = {o.name: o.female_share for o in load_occupations()}
    for item in splits["test"]:
        majority = "female" if share[item["occupation"]] > 0.5 else "male"
        assert item["option_groups"][item["pro_option"]] == majority
        assert item["option_groups"][item["anti_option"]] != majority


def test_splits_are_disjoint(splits):
    seen = {}
    for split, ds in splits.items():
        for pair in set(ds["pair_id"]):
            assert pair not in seen, f"{pair} in {seen.get(pair)} and {split}"
            seen[pair] = split
    heldout = set(splits["heldout_occupations"]["occupation"])
    assert heldout == set(DEFAULT_HELDOUT)
    for split in ("train", "val", "test"):
        assert not heldout & set(splits[split]["occupation"])


def test_unambiguous_items_state_the_answer(splits):
    item = next(i for i in splits["test"] if not i["ambiguous"] and i["attribute"] == "occupation")
    holder = item["options"][item["correct"]].strip()
    assert f"{holder} is a" in item["prompt"] or f"{holder} is an" in item["prompt"]


def test_deterministic_and_seeded():
    a, b, c = build(seed=3), build(seed=3), build(seed=4)
    assert a["train"]["id"] == b["train"]["id"]
    assert a["train"]["id"] != c["train"]["id"]


def test_bad_sizes_are_one_line_errors():
    with pytest.raises(DsoError, match="even"):
        build(n_train=601)
    with pytest.raises(DsoError, match="n_train: asked for 5000 pairs but only"):
        build(n_train=10_000)
    with pytest.raises(DsoError, match="unknown held-out"):
        build(heldout_occupations=["astronaut"])
