"""Several protected attributes: BBQ's race categories, one benchmark over several attributes, and
the per-attribute rows and per-group selection rates that sweep, eval and report give."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from dso_cli.benchmarks import bbq, mixture, occupation
from dso_cli.benchmarks.attribute_mix import prefixed
from dso_cli.benchmarks.attributes import RACE, RACE_X_GENDER, attribute_list
from dso_cli.errors import DsoError
from dso_cli.metrics import PolicyView, bbq_bias_scores, group_selection_rates
from dso_cli.pipeline.results import by_member, merge_into_csv
from dso_cli.report.groups import group_rates_plot, group_rates_table, load_group_rates
from tests.cli_runner import SMALL, dso

TINY = {"n_train": 40, "n_train_unambiguous": 20, "test_pairs_per_occupation": 1, "val_pairs_per_occupation": 1,
        "heldout_template_pairs_per_occupation": 1}  # fmt: skip


def test_bbq_labels_map_onto_the_race_vocabulary():
    assert bbq.option_group("F-Black", "race") == "black" == bbq.option_group("African American", "race")
    assert bbq.option_group("F-Black", "race_x_gender") == "black_female"
    assert bbq.option_group("M-Hispanic", "race_x_gender") == "latino_male"
    assert bbq.option_group("Middle Eastern", "race") == "arab" and bbq.option_group("Roma", "race") == "roma"
    assert bbq.option_group("", "race_x_gender") == "other" == bbq.option_group("Black", "race_x_gender")
    assert bbq.option_group("unknown", "race") == "unknown" and bbq.option_group("F", "gender") == "female"
    assert bbq.targeted("M-Latino", ["Hispanic", "Latino"], "race")
    assert not bbq.targeted("White", ["Hispanic", "Latino"], "race")


@pytest.mark.parametrize("attribute,vocabulary", [("race", RACE), ("race_x_gender", RACE_X_GENDER)])
def test_bbq_race_categories_are_decision_benchmarks(attribute, vocabulary):
    splits = bbq.build(attribute=attribute, n_train=40, n_train_unambiguous=20)
    for split in ("train", "val", "test"):
        items = splits[split].to_list()
        assert items and {it["attribute"] for it in items} == {attribute}
        for it in items:
            people = [g for g in it["option_groups"] if g not in ("unknown", "other")]
            assert set(people) <= set(vocabulary) and "unknown" in it["option_groups"]
            if it["pro_option"] >= 0:  # a direction where BBQ's stereotype singles out one person
                assert it["anti_option"] >= 0 and it["pro_option"] != it["anti_option"]
            else:
                assert len(set(people)) == 2, "no direction: two groups compared head to head"
    pool = [it for instances in bbq.load_groups(attribute=attribute).values() for inst in instances for it in inst]
    assert any(it["pro_option"] < 0 for it in pool) and any(it["pro_option"] >= 0 for it in pool)
    assert len({it["cluster"] for it in pool}) > 10
    with pytest.raises(DsoError, match=r"bias\.attribute must be one of gender, race, race_x_gender for bbq"):
        bbq.build(attribute="religion")


def test_bbq_bias_scores_count_only_items_with_a_direction():
    base = {"options": [" A", " B", " C"], "option_groups": ["black", "unknown", "white"], "cluster": "q1",
            "attribute": "race", "correct": 1}  # fmt: skip
    directed = [dict(base, id=f"d{i}", pair_id=f"d{i}", ambiguous=False, pro_option=0, anti_option=2, correct=2)
                for i in range(2)]  # fmt: skip
    undirected = [dict(base, id=f"u{i}", pair_id=f"u{i}", ambiguous=False, pro_option=-1, anti_option=-1, correct=0)
                  for i in range(2)]  # fmt: skip
    probs = torch.tensor([[0.8, 0.1, 0.1]] * 4)  # always the first person
    scores = bbq_bias_scores(PolicyView(directed + undirected, probs))
    assert scores["s_dis"] == pytest.approx(1.0), "the undirected items' choices are no 'biased' answers"


def test_attribute_lists_are_checked():
    assert attribute_list("race") == ["race"] and attribute_list(["gender", "race"]) == ["gender", "race"]
    for bad in ([], ["race", "race"], [""], 3):
        with pytest.raises(DsoError, match=r"bias\.attribute"):
            attribute_list(bad)
    with pytest.raises(DsoError, match="one BBQ category"):
        bbq.build(attribute=["gender", "race"], data_file="x.jsonl")


def test_one_benchmark_over_several_attributes_is_each_attribute_as_built_alone():
    both = occupation.build(attribute=["gender", "race"], **TINY)
    for attribute in ("gender", "race"):
        alone = occupation.build(attribute=attribute, **TINY)
        assert set(alone) == set(both)
        for split in alone:
            mine = [it for it in both[split].to_list() if it["attribute"] == attribute]
            assert mine == [prefixed(it, attribute) for it in alone[split].to_list()], (attribute, split)
    clusters = {it["cluster"] for it in both["test"].to_list()}
    assert "gender:nurse" in clusters and "race:nurse" in clusters
    assert len({it["id"] for it in both["train"].to_list()}) == len(both["train"])
    members = by_member(both["test"].to_list())
    assert list(members) == [("occupation", "gender"), ("occupation", "race")]


def test_a_mixture_passes_the_attribute_to_its_members():
    configs = mixture.member_configs(["occupation", "bbq", "synthbias"], {"attribute": ["gender", "race"]})
    assert configs["occupation"]["attribute"] == ["gender", "race"] == configs["bbq"]["attribute"]
    assert "attribute" not in configs["synthbias"]
    assert mixture.member_configs(["occupation"], {"attribute": None})["occupation"]["attribute"] == "gender"


def _item(i: int, groups: list[str], ambiguous: bool = True) -> dict:
    return {"id": f"i{i}", "options": [f" {g}" for g in groups], "option_groups": groups, "ambiguous": ambiguous}


def test_group_selection_rates_by_hand():
    items = [_item(0, ["black", "white"]), _item(1, ["white", "black"]), _item(2, ["asian", "unknown", "black"]),
             _item(3, ["black", "white"], ambiguous=False)]  # fmt: skip
    probs = torch.tensor([[0.7, 0.3, 0.0], [0.6, 0.4, 0.0], [0.2, 0.5, 0.3], [1.0, 0.0, 0.0]])
    rates = {r["group"]: r for r in group_selection_rates(items, probs)}
    assert set(rates) == {"asian", "black", "white", "unknown"}
    assert rates["black"]["selection_rate"] == pytest.approx((0.7 + 0.4 + 0.3) / 3) and rates["black"]["n_items"] == 3
    assert rates["white"]["selection_rate"] == pytest.approx(0.45) and rates["white"]["chosen_rate"] == 0.5
    assert rates["asian"]["selection_rate"] == pytest.approx(0.2) and rates["unknown"]["chosen_rate"] == 1.0
    assert np.isnan(rates["asian"]["selection_rate_se"]) and rates["black"]["selection_rate_se"] > 0


def test_a_result_file_written_before_a_key_column_is_replaced_not_duplicated(tmp_path):
    path = tmp_path / "sweep.csv"
    pd.DataFrame([{"method": "dso", "benchmark": "occupation", "split": "test", "alpha": 0.0, "pob": 0.3}]).to_csv(
        path, index=False
    )
    new = pd.DataFrame([{"method": "dso", "benchmark": "occupation", "attribute": "gender", "split": "test",
                         "alpha": 0.0, "pob": 0.2}])  # fmt: skip
    merge_into_csv(path, new, ["method", "benchmark", "attribute", "split", "alpha"])
    again = pd.read_csv(path)
    assert len(again) == 1 and again.loc[0, "pob"] == 0.2 and again.loc[0, "attribute"] == "gender"


def test_report_draws_each_groups_selection_rate(tmp_path):
    rows = [{"method": "dso", "benchmark": "occupation", "attribute": attribute, "split": "test", "alpha": alpha,
             "group": group, "selection_rate": rate, "selection_rate_se": 0.01, "chosen_rate": rate, "n_items": 8}
            for attribute, groups in (("gender", ("male", "female")), ("race", ("black", "white", "asian")))
            for alpha in (0.0, 0.5, 1.0) for k, group in enumerate(groups)
            for rate in [0.5 + (k - 0.5) * 0.2 * (1 - alpha)]]  # fmt: skip
    pd.DataFrame(rows).to_csv(tmp_path / "sweep_groups.csv", index=False)
    data = load_group_rates([tmp_path], "test")
    assert set(data["alpha"]) == {0.0, 1.0}, "the base model and the largest strength"
    assert set(data["member"]) == {"occupation · gender", "occupation · race"}
    table = group_rates_table(data)
    assert "| occupation · race | asian |" in table and "dso 1" in table
    assert group_rates_plot(data, tmp_path / "groups.png").stat().st_size > 1000
    assert load_group_rates([tmp_path], "val").empty


def test_train_sweep_report_over_two_attributes(tiny_llama_dir, tmp_path):
    run_dir = tmp_path / "run"
    model = ["model=hf", f"model.name_or_path={tiny_llama_dir}", f"run_dir={run_dir}"]
    result = dso("train", *model, "bias.attribute=[gender,race]", *SMALL)
    assert result.returncode == 0, result.stderr[-3000:]
    log = pd.read_csv(run_dir / "train_log.csv")  # each attribute's batch POB beside the whole batch's
    assert {"batch_pob_gender", "batch_pob_race"} <= set(log.columns)
    members = log[["batch_pob_gender", "batch_pob_race"]]  # empty where a batch drew no cluster of one
    assert members.notna().any(axis=1).all() and members.stack().dropna().between(0, 1).all()
    result = dso("sweep", *model, "alpha=[0,1]", "sweep.bootstrap_reps=10", "scoring.batch_size=32", "model.device=cpu")
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = pd.read_csv(run_dir / "sweep.csv")
    assert sorted(zip(sweep["attribute"], sweep["alpha"], strict=True)) == [
        ("gender", 0.0), ("gender", 1.0), ("race", 0.0), ("race", 1.0)
    ]  # fmt: skip
    rates = pd.read_csv(run_dir / "sweep_groups.csv")
    assert set(rates[rates["attribute"] == "race"]["group"]) <= set(RACE)
    assert set(rates[rates["attribute"] == "gender"]["group"]) == {"male", "female"}
    result = dso("report", f"run_dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (run_dir / "report/groups.png").is_file()
    assert "## Selection rate per group" in (run_dir / "report/pareto.md").read_text()
    manifest = json.loads((run_dir / "artifact/manifest.json").read_text())
    assert manifest["method"] == "dso"


def test_heuristic_methods_refuse_items_without_a_direction(tokenizer):
    from dso_cli.scoring import OptionScorer
    from dso_cli.steering.activations import ActivationStore
    from tests.conftest import build_tiny_model

    scorer = OptionScorer(build_tiny_model("llama", tokenizer, seed=3), tokenizer, batch_size=32)
    store = ActivationStore(scorer, occupation.build(attribute="race", **TINY)["train"].to_list())
    with pytest.raises(DsoError, match="no training item states a stereotype direction"):
        store.prefetch(outputs=["model.layers.0"])
