"""Groups are data: attributes with their own vocabularies, POB and item_bias for any number of groups
(exactly today's numbers with two), and rewards that need no stereotype direction."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch

from dso_cli.benchmarks import decisions, occupation
from dso_cli.benchmarks.schema import ItemError, validate_item
from dso_cli.errors import DsoError
from dso_cli.evaluation import decision_metrics
from dso_cli.metrics import PolicyView, head_to_head_bias, per_occupation_bias
from dso_cli.rl.rewards import AbsGapReward, DecisionBalanceReward, StereotypeFlipReward
from tests.cli_runner import ROOT


@pytest.fixture(scope="module")
def occupation_test():
    return occupation.build(test_pairs_per_occupation=2, n_train=8, n_train_unambiguous=8)["test"].to_list()


def undirected(items):
    return [dict(it, pro_option=-1, anti_option=-1) for it in items]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_two_groups_head_to_head_is_todays_pob_exactly(occupation_test, seed):
    probs = torch.softmax(torch.randn(len(occupation_test), 2, generator=torch.Generator().manual_seed(seed)), -1)
    v = PolicyView(occupation_test, probs)
    amb = v.ambiguous
    for kind in ("soft", "hard"):
        today = per_occupation_bias(getattr(v, f"gap_{kind}")[amb], v.cluster[amb])
        assert head_to_head_bias(getattr(v, f"leans_{kind}")[amb], v.cluster[amb]) == today
    directed = decision_metrics(occupation_test, probs, bootstrap_reps=50)
    without = decision_metrics(undirected(occupation_test), probs, bootstrap_reps=50)
    for column in ("pob", "pob_hard", "item_bias", "order_dep", "first_option_rate"):
        assert without[column] == directed[column], column
    assert without["pob_se"] == pytest.approx(directed["pob_se"], rel=1e-9)
    assert np.isnan(without["stereotype_gap"]), "no direction, no stereotype gap"


def three_group_items(lean):
    """One cluster, each pair of the groups a, b, c met in both orders; the model gives ``lean[g]`` more
    weight to group g (P(g) ∝ exp(lean[g])), whatever the order."""
    items, rows = [], []
    for g, h in (("a", "b"), ("a", "c"), ("b", "c")):
        for first, second in ((g, h), (h, g)):
            items.append({"cluster": "job", "pair_id": f"job/{g}{h}", "pro_option": -1, "anti_option": -1,
                          "ambiguous": True, "correct": -1, "option_groups": [first, second]})  # fmt: skip
            rows.append(torch.softmax(torch.tensor([lean[first], lean[second]]), 0))
    return items, torch.stack(rows)


def test_three_groups_by_hand():
    items, probs = three_group_items({"a": 1.0, "b": 0.0, "c": 0.0})
    p = float(torch.sigmoid(torch.tensor(1.0)))
    m = decision_metrics(items, probs, bootstrap_reps=20)
    assert m["pob"] == pytest.approx(2 * p - 1), "the largest head-to-head lean: a against b (or c)"
    assert m["item_bias"] == pytest.approx((4 * (2 * p - 1) + 2 * 0) / 6)
    assert m["order_dep"] == pytest.approx(0.0, abs=1e-7)
    even, probs = three_group_items({"a": 0.0, "b": 0.0, "c": 0.0})
    assert decision_metrics(even, probs, bootstrap_reps=20)["pob"] == pytest.approx(0.0)


def test_flip_and_gap_rewards_need_no_direction(occupation_test):
    amb = [it for it in occupation_test if it["ambiguous"]]
    probs = torch.softmax(torch.randn(len(amb), 2, generator=torch.Generator().manual_seed(3)), -1)
    for reward in (StereotypeFlipReward(), AbsGapReward(), DecisionBalanceReward(occupation_weight=1.0)):
        assert torch.allclose(reward(undirected(amb), probs), reward(amb, probs), atol=1e-6), type(reward).__name__
    items, probs = three_group_items({"a": 1.0, "b": 0.0, "c": -0.5})
    r = StereotypeFlipReward()(items, probs)
    assert r[0].tolist() == [-1.0, 1.0] and r[2].tolist() == [-1.0, 1.0], "a, the leaning group, is pushed down"
    g = AbsGapReward()(items, probs)  # the worst head-to-head is a against c: only it is pushed
    assert g[2, 0] < 0 < g[2, 1] and g[3, 1] < 0 < g[3, 0]
    assert not g[[0, 1, 4, 5]].any()


def test_groups_are_checked_against_their_attribute():
    base = {"id": "x", "options": [" A", " B"], "pro_option": -1, "anti_option": -1, "correct": -1,
            "ambiguous": True}  # fmt: skip
    validate_item({**base, "attribute": "race", "option_groups": ["black", "white"]})
    validate_item({**base, "attribute": "religion", "option_groups": ["hindu", "sikh"]})  # a user's own
    with pytest.raises(ItemError, match="unknown race group 'martian'"):
        validate_item({**base, "attribute": "race", "option_groups": ["black", "martian"]})
    with pytest.raises(ItemError, match="unknown gender group 'white'"):
        validate_item({**base, "option_groups": ["male", "white"]})


def test_decision_files_read_attributes_and_old_question_types(tmp_path):
    three = decisions.build(str(ROOT / "examples/decisions/three_groups.jsonl"))
    items = [it for split in three.values() for it in split]
    assert {it["attribute"] for it in items} == {"age"}
    assert {g for it in items for g in it["option_groups"]} == {"young", "middle_aged", "older"}
    old = tmp_path / "old.jsonl"
    rows = [json.loads(line) for line in (ROOT / "examples/decisions/hiring.jsonl").read_text().splitlines()]
    for row in rows:  # as files were written before attributes were data: attribute held the question type
        row["attribute"] = row.pop("question_type")
    old.write_text("".join(json.dumps(r) + "\n" for r in rows))
    legacy = [it for split in decisions.build(str(old)).values() for it in split]
    assert {it["attribute"] for it in legacy} == {"gender"}
    assert {it["question_type"] for it in legacy} == {"hire", "experience"}


@pytest.fixture(scope="module")
def race_splits():
    return occupation.build(attribute="race", test_pairs_per_occupation=2, n_train=40, n_train_unambiguous=20)


def test_race_items_name_two_ethnicities_of_one_gender(race_splits):
    from dso_cli.benchmarks.attributes import RACE
    from dso_cli.benchmarks.names import first_names

    gender_of = {name: key[1] for key, names in first_names().items() for name in names}
    for split in ("train", "test", "heldout_templates"):
        items = race_splits[split].to_list()
        assert items and all(it["attribute"] == "race" and it["pro_option"] == -1 for it in items)
        for it in items:
            people = [g for g in it["option_groups"] if g != "unknown"]
            assert len(set(people)) == 2 and set(people) <= set(RACE)
        names = {name for it in items for name in it["id"].split("/")[5].split("_")[1:3]}
        assert len({gender_of[n] for n in names}) == 2, "men's and women's names both appear"
        for it in items:
            a, b = it["id"].split("/")[5].split("_")[1:3]
            assert gender_of[a] == gender_of[b], "gender matched within a pair: only ethnicity varies"
    train_names = {it["id"].split("/")[5] for it in race_splits["train"]}
    heldout_names = {it["id"].split("/")[5] for it in race_splits["heldout_templates"]}
    assert not {n.split("_")[1] for n in train_names} & {n.split("_")[1] for n in heldout_names}
    orders = Counter(it["pair_id"] for it in race_splits["test"])
    assert set(orders.values()) == {2}, "both name orders of every pair"


def test_race_x_gender_and_the_pob_of_race_items(race_splits):
    from dso_cli.benchmarks.attributes import GENDER, NAMED_RACE
    from dso_cli.benchmarks.occupation_templates import attribute_styles

    named = {f"{race}_{gender}" for race in NAMED_RACE for gender in GENDER}  # the groups with first names
    for heldout in (False, True):
        met = {style.groups for style in attribute_styles("race_x_gender", heldout)}
        assert {g for pair in met for g in pair} == named and len(met) == 45, "every two groups meet"
    items = race_splits["test"].to_list()
    probs = torch.softmax(torch.randn(len(items), 2, generator=torch.Generator().manual_seed(0)), -1)
    m = decision_metrics(items, probs, bootstrap_reps=20)
    assert 0 < m["pob"] < 1 and m["pob_se"] > 0 and np.isnan(m["stereotype_gap"])
    with pytest.raises(DsoError, match=r"bias\.attribute must be gender, race or race_x_gender"):
        occupation.build(attribute="religion")
    with pytest.raises(DsoError, match="image benchmark"):
        occupation.build(attribute="race", modality="image")


def test_an_older_runs_benchmark_reads_new_settings_at_their_default():
    from omegaconf import OmegaConf

    from dso_cli.commands.eval import benchmark_config

    own = {"_target_": "dso_cli.benchmarks.occupation.build", "name": "occupation", "n_train": 40}
    cfg = benchmark_config(OmegaConf.create({"bias_benchmark": own}), "occupation")
    assert cfg.attribute == "gender" and cfg.n_train == 40, "made before bias.attribute existed, still evaluated"


def test_race_comparisons_span_several_name_pairs():
    """Each occupation's test compares two ethnicities through several name pairs (drawn per pair), not
    through one name pair per comparison."""
    splits = occupation.build(attribute="race", n_train=40, n_train_unambiguous=20)
    by_comparison: dict = {}
    for it in splits["test"].to_list():
        if it["ambiguous"]:
            key = (it["cluster"], tuple(sorted(it["option_groups"])))
            words = it["prompt"].split()  # "Latasha and Queenie are ...": the two people's names
            by_comparison.setdefault(key, set()).add(tuple(sorted((words[0], words[2]))))
    occupations = {cluster for cluster, _ in by_comparison}
    assert len(by_comparison) == len(occupations), "one comparison per occupation at the default sizes"
    assert np.mean([len(names) for names in by_comparison.values()]) >= 3.5
    compared = {groups for _, groups in by_comparison}
    assert len(compared) == 10, "every two of the five named ethnicities are compared somewhere"


def test_the_name_shuffle_floor_separates_groups_from_names():
    """A policy that prefers particular names (a random lean per name pair) has POB at its floor (on
    average over such policies); one that prefers a group whatever its names has POB far above it."""
    items = occupation.build(attribute="race", n_train=40, n_train_unambiguous=20)["test"].to_list()
    rng = np.random.default_rng(0)
    pobs, floors = [], []
    for _ in range(8):
        name_lean: dict = {}
        by_name = []
        for it in items:
            names = tuple(sorted(it["option_people"]))  # who the options stand for (also " A", " Yes")
            lean = name_lean.setdefault(names, rng.uniform(0.1, 0.9))  # P(the alphabetically first name)
            p_first_name = lean if it["option_people"][0] == names[0] else 1 - lean
            by_name.append([p_first_name, 1 - p_first_name])
        names_only = decision_metrics(items, torch.tensor(by_name), bootstrap_reps=0)
        pobs.append(names_only["pob"])
        floors.append(names_only["pob_name_floor"])
    assert np.mean(floors) == pytest.approx(np.mean(pobs), rel=0.1)
    by_group = []
    for it in items:
        favoured = min(it["option_groups"])  # the alphabetically first ethnicity, whatever the names
        p = 0.8 if it["option_groups"][0] == favoured else 0.2
        by_group.append([p, 1 - p])
    groups = decision_metrics(items, torch.tensor(by_group), bootstrap_reps=0)
    assert groups["pob"] == pytest.approx(0.6) and groups["pob_name_floor"] < 0.3
