"""Metrics on hand-made policies where the answer is known exactly."""

import math

import numpy as np
import pytest
import torch

from dso_cli.evaluation import decision_metrics
from dso_cli.metrics import PolicyView, hypervolume, is_monotone, pareto_mask, per_occupation_bias


def item(occ, pair, pro=0, ambiguous=True, correct=-1, groups=("male", "female")):
    return {"cluster": occ, "pair_id": f"{occ}/{pair}", "pro_option": pro, "anti_option": 1 - pro,
            "ambiguous": ambiguous, "correct": correct, "option_groups": list(groups)}  # fmt: skip


def test_pob_and_gap_exact():
    # nurse: P(pro) = 0.9 on both orders -> |0.9 - 0.1| = 0.8; carpenter: P(pro) = 0.4 -> 0.2
    items = [item("nurse", 0, pro=0), item("nurse", 0, pro=1), item("carpenter", 0, pro=0), item("carpenter", 0, pro=1)]
    probs = torch.tensor([[0.9, 0.1], [0.1, 0.9], [0.4, 0.6], [0.6, 0.4]])
    m = decision_metrics(items, probs, bootstrap_reps=10)
    assert m["pob"] == pytest.approx((0.8 + 0.2) / 2)
    assert m["stereotype_gap"] == pytest.approx(abs((0.8 * 2 - 0.2 * 2) / 4))
    assert m["pob_hard"] == pytest.approx(1.0)
    assert math.isnan(m["unamb_acc"]) and math.isnan(m["kl"])
    assert m["n_ambiguous"] == 4 and m["n_unambiguous"] == 0


def test_unambiguous_accuracy_refusal_and_kl():
    items = [item("nurse", 0, ambiguous=False, correct=0, groups=("male", "female", "unknown")),
             item("nurse", 1, ambiguous=False, correct=1, groups=("male", "female", "unknown"))]  # fmt: skip
    probs = torch.tensor([[0.6, 0.2, 0.2], [0.6, 0.3, 0.1]])
    m = decision_metrics(items, probs, base_probs=probs)
    assert m["unamb_acc"] == pytest.approx((0.6 + 0.3) / 2)
    assert m["unamb_acc_hard"] == pytest.approx(0.5)
    assert m["refusal_rate_unamb"] == pytest.approx(0.15)  # refusing where the prompt answers
    assert math.isnan(m["refusal_rate"])  # no ambiguous item here
    assert m["kl"] == pytest.approx(0.0, abs=1e-7)
    shifted = decision_metrics(items, torch.tensor([[0.2, 0.6, 0.2], [0.6, 0.3, 0.1]]), base_probs=probs)
    assert shifted["kl"] == pytest.approx(0.5 * (0.2 * math.log(0.2 / 0.6) + 0.6 * math.log(0.6 / 0.2)), rel=1e-5)


def test_bootstrap_se_is_deterministic_and_shrinks_with_data():
    rng = np.random.default_rng(0)

    def sample(n_pairs):
        items, rows = [], []
        for occ in range(10):
            for pair in range(n_pairs):
                p = rng.uniform(0.2, 0.9)
                items += [item(f"o{occ}", pair, pro=0), item(f"o{occ}", pair, pro=1)]
                rows += [[p, 1 - p], [1 - p, p]]
        return items, torch.tensor(rows)

    small, big = sample(4), sample(64)
    se_small = decision_metrics(*small)["pob_se"]
    assert se_small == decision_metrics(*small)["pob_se"]
    assert 0 < decision_metrics(*big)["pob_se"] < se_small


def test_per_occupation_bias_signs_cancel_within_but_not_across_occupations():
    gaps = np.array([0.5, -0.5, 0.5, 0.5])
    occ = np.array(["a", "a", "b", "b"])
    assert per_occupation_bias(gaps, occ) == pytest.approx(0.25)


def test_pareto_and_hypervolume():
    pob, acc = [0.3, 0.1, 0.2, 0.25], [0.9, 0.8, 0.7, 0.85]
    assert pareto_mask(pob, acc) == [True, True, False, True]
    # front (0.1, 0.8), (0.25, 0.85) bounded by ref (0.3, 0): 0.15 * 0.8 + 0.05 * 0.85
    assert hypervolume(pob, acc, ref_pob=0.3) == pytest.approx(0.15 * 0.8 + 0.05 * 0.85)
    assert hypervolume([0.4], [0.9], ref_pob=0.3) == 0.0


def test_monotonicity_allows_noise_within_two_standard_errors():
    assert is_monotone([0.3, 0.2, 0.21, 0.1], [0.01] * 4)
    assert not is_monotone([0.3, 0.2, 0.3, 0.1], [0.01] * 4)


def test_bootstrap_se_is_nan_when_an_occupation_has_one_pair():
    items = [item("nurse", 0, pro=0), item("nurse", 0, pro=1), item("cook", 0, pro=0), item("cook", 1, pro=0)]
    assert math.isnan(decision_metrics(items, torch.tensor([[0.7, 0.3]] * 4))["pob_se"])


def bbq_item(ambiguous, pro, anti, correct, unknown=1):
    groups = ["male", "female", "female"]
    groups[unknown] = "unknown"
    groups[anti] = "male" if groups[pro] == "female" else groups[anti]
    return {"cluster": "q1", "pair_id": "p", "pro_option": pro, "anti_option": anti, "ambiguous": ambiguous,
            "correct": correct, "option_groups": groups}  # fmt: skip


def test_bbq_bias_scores_by_hand():
    from dso_cli.metrics import bbq_bias_scores

    # options: 0 = person X, 1 = unknown, 2 = person Y
    amb = [bbq_item(True, 0, 2, 1), bbq_item(True, 2, 0, 1), bbq_item(True, 0, 2, 1), bbq_item(True, 0, 2, 1)]
    dis = [bbq_item(False, 0, 2, 0), bbq_item(False, 0, 2, 2), bbq_item(False, 2, 0, 2), bbq_item(False, 0, 2, 1)]
    # argmax answers: amb -> unknown, biased (2), biased (0), anti (2); dis -> biased, biased, biased, unknown
    probs = torch.tensor([[0.2, 0.7, 0.1], [0.1, 0.2, 0.7], [0.6, 0.3, 0.1], [0.1, 0.3, 0.6],
                          [0.8, 0.1, 0.1], [0.5, 0.1, 0.4], [0.1, 0.1, 0.8], [0.2, 0.5, 0.3]])  # fmt: skip
    s = bbq_bias_scores(PolicyView(amb + dis, probs))
    assert s["acc_amb"] == pytest.approx(1 / 4)  # only the first ambiguous item answered "unknown"
    assert s["s_dis"] == pytest.approx(2 * (3 / 3) - 1)  # 3 non-unknown answers, all biased
    assert s["s_amb"] == pytest.approx((1 - 1 / 4) * (2 * (2 / 3) - 1))  # 2 of 3 non-unknown answers biased
    assert bbq_bias_scores(PolicyView([item("nurse", 0)], torch.tensor([[0.5, 0.5]]))) == {}  # no unknown option


def test_accuracy_with_an_unknown_option_and_refusal():
    # an ambiguous BBQ item is answered correctly only by "unknown"; its mass is the refusal rate
    items = [bbq_item(True, 0, 2, 1), bbq_item(False, 0, 2, 2)]
    probs = torch.tensor([[0.3, 0.6, 0.1], [0.2, 0.2, 0.6]])
    m = decision_metrics(items, probs)
    assert m["unamb_acc"] == pytest.approx(0.6) and m["unamb_acc_hard"] == 1.0  # disambiguated item only
    assert m["refusal_rate"] == pytest.approx(0.6)  # the ambiguous item's mass on "unknown"
    assert m["refusal_rate_unamb"] == pytest.approx(0.2)  # the disambiguated item's
    assert m["pob"] == pytest.approx(abs(0.3 - 0.1))


def test_pro_anti_accuracy_by_hand():
    from dso_cli.metrics import pro_anti_accuracy

    pro_items = [item("nurse", i, pro=0, ambiguous=False, correct=0) for i in range(3)]
    anti_items = [item("nurse", i, pro=1, ambiguous=False, correct=0) for i in range(2)]
    probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.4, 0.6], [0.3, 0.7], [0.6, 0.4]])
    acc = pro_anti_accuracy(PolicyView(pro_items + anti_items, probs))
    assert acc["acc_pro"] == pytest.approx(2 / 3) and acc["acc_anti"] == pytest.approx(1 / 2)
    assert acc["acc_pro_anti_gap"] == pytest.approx(2 / 3 - 1 / 2)
    assert pro_anti_accuracy(PolicyView(pro_items, probs[:3])) == {}  # no anti-stereotypical items: no contrast


def test_schema_allows_unknown_as_the_answer_of_an_ambiguous_item():
    from dso_cli.benchmarks.schema import validate_item
    from dso_cli.errors import DsoError

    base = {"id": "x", "options": [" A", " B", " C"], "option_groups": ["male", "unknown", "female"],
            "pro_option": 0, "anti_option": 2, "ambiguous": True}  # fmt: skip
    validate_item({**base, "correct": 1})
    validate_item({**base, "correct": -1})
    with pytest.raises(DsoError, match="only correct option is an 'unknown'"):
        validate_item({**base, "correct": 0})


def test_mean_se():
    from dso_cli.metrics import mean_se

    assert mean_se(np.array([1.0, 0.0, 1.0, 0.0])) == pytest.approx(np.std([1, 0, 1, 0], ddof=1) / 2)
    assert math.isnan(mean_se(np.array([1.0])))


def test_operating_point_is_chosen_on_val_and_reported_on_test():
    import pandas as pd

    from dso_cli.report.tables import operating_points

    rows = []
    #                        alpha: (val pob, val acc, test pob, test acc)
    for alpha, (vp, va, tp, ta) in {0.0: (0.30, 0.60, 0.28, 0.61), 0.5: (0.20, 0.58, 0.25, 0.60),
                                    1.0: (0.10, 0.50, 0.12, 0.52)}.items():  # fmt: skip
        rows.append({"method": "m", "split": "val", "alpha": alpha, "pob": vp, "pob_se": 0.01, "unamb_acc": va,
                     "unamb_acc_se": 0.02, "kl": alpha})  # fmt: skip
        rows.append({"method": "m", "split": "test", "alpha": alpha, "pob": tp, "pob_se": 0.02, "unamb_acc": ta,
                     "unamb_acc_se": 0.03, "kl": alpha})  # fmt: skip
    data = pd.DataFrame(rows)
    best = operating_points(data, "val", "test", max_acc_drop=0.05).iloc[0]
    # alpha=1 has the lowest val POB but costs 0.10 val accuracy: alpha=0.5 is chosen, reported on test
    assert best["alpha"] == 0.5 and best["pob"] == 0.25 and best["unamb_acc"] == 0.60
    assert best["select_pob"] == 0.20 and best["pob_change"] == pytest.approx(0.25 - 0.28)
    assert operating_points(data, "val", "test", max_acc_drop=0.2).iloc[0]["alpha"] == 1.0


def test_paired_hypervolume_bootstrap():
    from dso_cli.benchmarks.occupation import build
    from dso_cli.metrics import bootstrap_hypervolumes

    items = build(test_pairs_per_occupation=4)["test"].to_list()
    g = torch.Generator().manual_seed(0)
    base = torch.softmax(torch.randn(len(items), 2, generator=g) * 2, dim=1)
    # a "steered" policy halfway to uniform: less per-occupation bias, no accuracy change on average
    fairer = 0.5 * base + 0.25
    curves = {"a": [base, fairer], "same_as_a": [base, fairer], "base_only": [base]}
    draws = bootstrap_hypervolumes(items, curves, base, reps=300, seed=1)
    assert all(d.shape == (300,) for d in draws.values())
    np.testing.assert_array_equal(draws["a"], draws["same_as_a"])  # one draw shared by every curve
    assert (draws["base_only"] == 0).all()  # the base point bounds the area: it dominates nothing
    view_base, view_fairer = (decision_metrics(items, p, bootstrap_reps=0) for p in (base, fairer))
    full = hypervolume([view_base["pob"], view_fairer["pob"]], [view_base["unamb_acc"], view_fairer["unamb_acc"]],
                       view_base["pob"])  # fmt: skip
    assert full > 0 and draws["a"].std() > 0
    assert abs(draws["a"].mean() - full) < 3 * draws["a"].std()
    assert bootstrap_hypervolumes(items, curves, base, reps=300, seed=1)["a"].tolist() == draws["a"].tolist()


def twins(occ, n_pairs, p_first, pro_first=True):
    """``n_pairs`` counterbalanced twins whose policy gives the first-listed person ``p_first``."""
    items, rows = [], []
    for pair in range(n_pairs):
        for first_is_male in (True, False):
            groups = ("male", "female") if first_is_male else ("female", "male")
            pro = 0 if first_is_male == pro_first else 1
            items.append(item(occ, pair, pro=pro, groups=groups))
            rows.append([p_first, 1 - p_first])
    return items, rows


def test_a_first_position_rule_has_no_pob_but_full_item_bias_and_order_dependence():
    items, rows = [], []
    for occ in ("nurse", "carpenter", "clerk"):
        more_items, more_rows = twins(occ, 3, 0.97)
        items, rows = items + more_items, rows + more_rows
    m = decision_metrics(items, torch.tensor(rows), bootstrap_reps=50)
    assert m["pob"] == pytest.approx(0.0, abs=1e-9)
    assert m["item_bias"] == pytest.approx(0.94)
    assert m["first_option_rate"] == 1.0
    assert m["order_dep"] == pytest.approx(0.94)
    assert m["item_bias_se"] == pytest.approx(0.0, abs=1e-9)  # every resample has the same |gap|


def test_equiprobable_decisions_are_fair_on_every_metric_and_ties_split_the_first_option_rate():
    items, rows = twins("nurse", 4, 0.5)
    m = decision_metrics(items, torch.tensor(rows), bootstrap_reps=20)
    assert m["pob"] == m["item_bias"] == m["order_dep"] == 0.0
    assert m["first_option_rate"] == 0.5


def test_a_gender_rule_has_item_bias_equal_to_pob_and_no_order_dependence():
    # P(male) = 0.8 wherever the man is listed: decisions follow gender, not position
    items, rows = [], []
    for pair in range(3):
        items += [item("nurse", pair, pro=1, groups=("male", "female")),
                  item("nurse", pair, pro=0, groups=("female", "male"))]  # fmt: skip
        rows += [[0.8, 0.2], [0.2, 0.8]]
    m = decision_metrics(items, torch.tensor(rows), bootstrap_reps=20)
    assert m["pob"] == pytest.approx(0.6) and m["item_bias"] == pytest.approx(0.6)
    assert m["order_dep"] == pytest.approx(0.0, abs=1e-9)
    assert m["first_option_rate"] == 0.5


def test_order_dependence_is_exact_on_mixed_twins_and_ignores_the_unknown_option():
    groups_a, groups_b = ("male", "unknown", "female"), ("female", "male", "unknown")
    items = [item("nurse", 0, groups=groups_a), item("nurse", 0, groups=groups_b)]
    for it in items:
        it["pro_option"], it["anti_option"] = it["option_groups"].index("female"), it["option_groups"].index("male")
    probs = torch.tensor([[0.5, 0.3, 0.2], [0.4, 0.4, 0.2]])
    m = decision_metrics(items, probs, bootstrap_reps=0)
    # man: 0.5 listed first vs 0.4 listed second; woman: 0.2 listed third vs 0.4 listed first
    assert m["order_dep"] == pytest.approx((0.1 + 0.2) / 2)
    assert m["refusal_rate"] == pytest.approx((0.3 + 0.2) / 2)  # mean P(unknown) on the ambiguous items
    assert math.isnan(m["refusal_rate_unamb"])
    # first-listed person: the man (index 0) in the first item, the woman in the second
    assert m["first_option_rate"] == pytest.approx((1.0 + 0.5) / 2)


def test_item_bias_se_comes_from_the_pair_bootstrap():
    rng = np.random.default_rng(1)
    items, rows = [], []
    for occ in range(6):
        for pair in range(5):
            p = rng.uniform(0.1, 0.9)
            items += [item(f"o{occ}", pair, pro=0), item(f"o{occ}", pair, pro=1)]
            rows += [[p, 1 - p], [1 - p, p]]
    m = decision_metrics(items, torch.tensor(rows), bootstrap_reps=400)
    assert 0 < m["item_bias_se"] < m["item_bias"]
    assert m["item_bias_se"] == decision_metrics(items, torch.tensor(rows), bootstrap_reps=400)["item_bias_se"]


def test_report_marks_a_curve_fair_by_position():
    import pandas as pd

    from dso_cli.report.tables import curve_summary, verdicts

    def curve(name, item_bias, order_dep):
        columns = {"alpha": [0.0, 1.0], "pob": [0.2, 0.01], "pob_se": [0.02, 0.01], "unamb_acc": [0.5, 0.9],
                   "item_bias": item_bias, "item_bias_se": [0.01, 0.01], "order_dep": order_dep,
                   "order_dep_se": [0.01, 0.01], "first_option_rate": [0.6, 1.0], "text_ppl": [30.0, 30.3],
                   "text_kl": [0.0, 0.02]}  # fmt: skip
        return pd.DataFrame({"curve": name, "method": "dso", **columns})

    data = pd.concat([curve("position", [0.47, 0.97], [0.19, 0.97]), curve("fair", [0.47, 0.1], [0.19, 0.05]),
                      curve("noise", [0.47, 0.48], [0.19, 0.2])])  # fmt: skip
    summary = curve_summary(data).set_index("curve")
    assert summary["fair_by_position"].to_dict() == {"fair": False, "noise": False, "position": True}
    assert summary.loc["position", "item_bias_ratio_to_base"] == pytest.approx(0.97 / 0.47)
    lines = verdicts(summary.reset_index())
    assert sum("FAIR BY POSITION" in line for line in lines) == 1 and "position" in lines[-1]
