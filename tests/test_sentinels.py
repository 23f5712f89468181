"""Metrics that cannot be fooled: sentinel policies with known answers, scored on the real benchmark.

Each sentinel is a rule a model could learn instead of fairness (answer whoever is named first, always
the stereotyped person, always "can't tell", a coin everywhere, ...). Every decision metric is
asserted on each, so a metric that a rule can satisfy shows up here, and ``dso report`` must flag the
rules that look fair by POB alone. POB's two implementations (the metric in numpy, the training
objective in torch) are checked to agree on random policies.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from dso_cli.benchmarks.attributes import SPECIAL
from dso_cli.benchmarks.occupation import build
from dso_cli.evaluation import decision_metrics
from dso_cli.metrics import pob
from dso_cli.report.tables import curve_summary, verdicts
from dso_cli.rl.rewards import cluster_pob


def _split(**options) -> list[dict]:
    splits = build(n_train=40, n_train_unambiguous=20, heldout_template_pairs_per_occupation=1, **options)
    return splits["test"].to_list()


@pytest.fixture(scope="module")
def gender_items() -> list[dict]:
    return _split()


@pytest.fixture(scope="module")
def unknown_items() -> list[dict]:
    return _split(unknown_option=True)


@pytest.fixture(scope="module")
def race_items() -> list[dict]:
    return _split(attribute="race")


def people(item: dict) -> list[int]:
    return [k for k, group in enumerate(item["option_groups"]) if group not in SPECIAL]


def one_hot(k: int, width: int) -> list[float]:
    row = [0.0] * width
    row[k] = 1.0
    return row


def rule_choice(item: dict, rule: str) -> int | None:
    """The option a rule answers on ``item``, or None for a coin between the people."""
    who = people(item)
    if rule == "uniform" or (rule == "fair_reader" and item["ambiguous"]):
        return None
    if rule in ("fair_reader", "position_reader") and not item["ambiguous"]:
        return item["correct"]
    return {
        "first": who[0],
        "position_reader": who[0],
        "second": who[1],
        "pro": item["pro_option"],
        "anti": item["anti_option"],
        "unknown": item["option_groups"].index("unknown") if "unknown" in item["option_groups"] else -1,
    }[rule]


def sentinel(items: list[dict], rule: str) -> torch.Tensor:
    """The option probabilities of a rule on every item: always the first- or second-listed person, the
    stereotyped or the other one, "can't tell", a coin between the people, the first-listed person
    where ambiguous and the stated one where not, or a coin where ambiguous and the stated one where
    not (the fair reader)."""
    width = max(len(item["options"]) for item in items)
    rows = []
    for item in items:
        choice = rule_choice(item, rule)
        who = people(item)
        rows.append(one_hot(choice, width) if choice is not None else
                    [1.0 / len(who) if k in who else 0.0 for k in range(width)])  # fmt: skip
    return torch.tensor(rows)


def scored(items: list[dict], rule: str) -> dict[str, float]:
    return decision_metrics(items, sentinel(items, rule), bootstrap_reps=50)


def share_pro_stated(items: list[dict]) -> float:
    unamb = [item for item in items if not item["ambiguous"]]
    return float(np.mean([item["correct"] == item["pro_option"] for item in unamb]))


def test_the_benchmark_counterbalances_the_evidence(gender_items):
    """Both listing orders of every stated answer; stereotyped and counter-stereotyped answers both
    present (the sentinels below rely on it)."""
    unamb = [item for item in gender_items if not item["ambiguous"]]
    firsts = [people(item).index(item["correct"]) == 0 for item in unamb]
    assert np.mean(firsts) == 0.5
    assert 0.3 < share_pro_stated(gender_items) < 0.7


def test_always_first(gender_items):
    m = scored(gender_items, "first")
    assert m["pob"] == pytest.approx(0.0, abs=1e-12) and m["pob_hard"] == pytest.approx(0.0, abs=1e-12)
    assert m["item_bias"] == 1.0 and m["order_dep"] == 1.0 and m["first_option_rate"] == 1.0
    assert m["stereotype_gap"] == pytest.approx(0.0, abs=1e-12)
    assert m["unamb_acc"] == 0.5 and m["unamb_acc_first"] == 1.0 and m["unamb_acc_second"] == 0.0
    assert m["unamb_acc_pro"] == pytest.approx(0.5) and m["unamb_acc_anti"] == pytest.approx(0.5)


def test_always_second(gender_items):
    m = scored(gender_items, "second")
    assert m["pob"] == pytest.approx(0.0, abs=1e-12)
    assert m["item_bias"] == 1.0 and m["order_dep"] == 1.0 and m["first_option_rate"] == 0.0
    assert m["unamb_acc"] == 0.5 and m["unamb_acc_first"] == 0.0 and m["unamb_acc_second"] == 1.0


@pytest.mark.parametrize("rule", ["pro", "anti"])
def test_always_the_stereotyped_or_the_other_person(gender_items, rule):
    m = scored(gender_items, rule)
    assert m["pob"] == 1.0 and m["pob_hard"] == 1.0 and m["item_bias"] == 1.0 and m["stereotype_gap"] == 1.0
    assert m["order_dep"] == pytest.approx(0.0, abs=1e-12) and m["first_option_rate"] == 0.5
    hit_pro = 1.0 if rule == "pro" else 0.0
    assert (m["unamb_acc_pro"], m["unamb_acc_anti"]) == (hit_pro, 1.0 - hit_pro)
    share = share_pro_stated(gender_items) if rule == "pro" else 1 - share_pro_stated(gender_items)
    assert m["unamb_acc"] == pytest.approx(share)
    assert m["unamb_acc_first"] == pytest.approx(share) and m["unamb_acc_second"] == pytest.approx(share)


def test_always_cant_tell(unknown_items):
    m = scored(unknown_items, "unknown")
    assert m["pob"] == 0.0 and m["item_bias"] == 0.0 and m["order_dep"] == 0.0
    assert m["first_option_rate"] == 0.0  # no person is ever the answer
    assert m["refusal_rate"] == 1.0 and m["refusal_rate_unamb"] == 1.0
    assert m["unamb_acc"] == 0.0
    assert m["unamb_acc_first"] == m["unamb_acc_second"] == m["unamb_acc_pro"] == m["unamb_acc_anti"] == 0.0
    assert m["unamb_acc_chance"] == 0.5
    base = scored(unknown_items, "fair_reader")
    curve = pd.DataFrame([base | {"alpha": 0.0}, m | {"alpha": 1.0}]).assign(curve="refuse", method="refuse")
    assert curve_summary(curve)["not_reading"].tolist() == [True]


def test_a_coin_everywhere(gender_items):
    m = scored(gender_items, "uniform")
    assert m["pob"] == 0.0 and m["item_bias"] == 0.0 and m["order_dep"] == 0.0
    assert m["first_option_rate"] == 0.5  # exact ties count one half
    assert m["unamb_acc"] == 0.5 == m["unamb_acc_chance"]
    assert m["unamb_acc_first"] == m["unamb_acc_second"] == m["unamb_acc_pro"] == m["unamb_acc_anti"] == 0.5


def test_position_rule_where_ambiguous_correct_where_stated(gender_items):
    m = scored(gender_items, "position_reader")
    assert m["pob"] == pytest.approx(0.0, abs=1e-12)
    assert m["item_bias"] == 1.0 and m["order_dep"] == 1.0 and m["first_option_rate"] == 1.0
    assert m["unamb_acc"] == 1.0
    assert m["unamb_acc_first"] == m["unamb_acc_second"] == m["unamb_acc_pro"] == m["unamb_acc_anti"] == 1.0


def test_the_fair_reader_passes_every_metric(gender_items):
    m = scored(gender_items, "fair_reader")
    assert m["pob"] == 0.0 and m["item_bias"] == 0.0 and m["order_dep"] == 0.0
    assert m["first_option_rate"] == 0.5 and m["unamb_acc"] == 1.0
    assert m["unamb_acc_first"] == m["unamb_acc_second"] == m["unamb_acc_pro"] == m["unamb_acc_anti"] == 1.0


def test_report_flags_every_rule_that_pob_alone_calls_fair(gender_items):
    """One curve per sentinel, from a stereotyped base model (ω = 0: P(pro) = .7) to the rule (ω = 1):
    the position rules are flagged FAIR BY POSITION, those at chance where the prompt says who (the coin,
    and the position rules that apply everywhere) NOT READING, the fair reader neither."""
    base = decision_metrics(gender_items, 0.7 * sentinel(gender_items, "pro") + 0.3 * sentinel(gender_items, "anti"))
    frames = []
    for rule in ("first", "second", "position_reader", "uniform", "fair_reader"):
        top = scored(gender_items, rule)
        frames.append(pd.DataFrame([base | {"alpha": 0.0}, top | {"alpha": 1.0}]).assign(curve=rule, method=rule))
    summary = curve_summary(pd.concat(frames, ignore_index=True)).set_index("curve")
    flagged = {rule: ("position" if row["fair_by_position"] else "") + ("reading" if row["not_reading"] else "")
               for rule, row in summary.iterrows()}  # fmt: skip
    assert flagged == {"first": "positionreading", "second": "positionreading", "position_reader": "position",
                       "uniform": "reading", "fair_reader": ""}  # fmt: skip
    lines = "\n".join(verdicts(summary.reset_index()))
    assert lines.count("FAIR BY POSITION") == 3 and lines.count("NOT READING") == 3


@pytest.mark.parametrize("which", ["gender", "race"])
def test_pob_has_one_definition_in_metrics_and_training(gender_items, race_items, which):
    """The training objective's POB (torch, differentiable) equals the reported metric (numpy) on random
    policies: with a stereotype direction (gender) and head to head (race)."""
    items = [item for item in (gender_items if which == "gender" else race_items) if item["ambiguous"]]
    width = max(len(item["options"]) for item in items)
    generator = torch.Generator().manual_seed(0)
    for _ in range(5):
        probs = torch.softmax(3 * torch.randn(len(items), width, generator=generator, dtype=torch.float64), -1)
        assert float(cluster_pob(items, probs)) == pytest.approx(pob(items, probs), abs=1e-6)
        assert decision_metrics(items, probs, bootstrap_reps=0)["pob"] == pytest.approx(pob(items, probs), abs=1e-6)
