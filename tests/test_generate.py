"""dso generate: answers at each strength are the model's own greedy continuation of the scored prompt
(steered exactly as scoring is), parsed back to the option they name, and compared with the scored
decision."""

import json

import pytest
import torch

import dso_cli
from dso_cli.commands.generate import spread
from dso_cli.evaluation.generation import GenerationSettings, agreement_summary, generate_at_strengths, parse_choice
from dso_cli.scoring import OptionScorer
from tests.cli_runner import SMALL, assert_bad_input, dso
from tests.conftest import build_tiny_model


@pytest.mark.parametrize(
    ("text", "options", "want"),
    [
        (" the woman, because she is a nurse", [" the man", " the woman"], 1),
        ("The man. The woman would be wrong.", [" the man", " the woman"], 0),  # the first named wins
        (" Sarah should get it", [" Michael", " Sarah"], 1),
        (" A", [" A", " B"], 0),
        (" Anna is the one", [" A", " B"], None),  # a whole word, not a letter inside one
        ("nobody can tell", [" the man", " the woman"], None),
        (" a woman", [" man", " woman"], 1),  # "man" inside "woman" is not a match
    ],
)
def test_parse_choice(text, options, want):
    assert parse_choice(text, options) == want


def test_agreement_summary_counts_parsed_agreeing_and_pob():
    base = {"options": [" a", " b"], "ambiguous": True, "pro_option": 0, "anti_option": 1, "cluster": "x"}
    records = [
        {**base, "alpha": 0.0, "choice": 0, "scored_choice": 0},
        {**base, "alpha": 0.0, "choice": 0, "scored_choice": 1},
        {**base, "alpha": 1.0, "choice": None, "scored_choice": 1},
        {**base, "alpha": 1.0, "choice": 1, "scored_choice": 1},
    ]
    at0, at1 = agreement_summary(records)
    assert (at0["parsed"], at0["agreement"], at0["generated_pob"], at0["scored_pob_hard"]) == (1.0, 0.5, 1.0, 0.0)
    assert (at1["parsed"], at1["agreement"], at1["generated_pob"], at1["scored_pob_hard"]) == (0.5, 0.5, 0.5, 1.0)


def test_agreement_summary_reports_how_often_the_first_named_person_is_chosen():
    base = {"options": [" a", " b", " c"], "ambiguous": True, "pro_option": 1, "anti_option": 2, "cluster": "x",
            "alpha": 1.0}  # fmt: skip
    records = [  # "can't tell" listed first: the first-named person is option 1
        {**base, "option_groups": ["unknown", "male", "female"], "choice": 1, "scored_choice": 1},
        {**base, "option_groups": ["unknown", "female", "male"], "choice": 2, "scored_choice": 1},
        {**base, "option_groups": ["male", "female", "unknown"], "choice": None, "scored_choice": 0},
    ]
    (row,) = agreement_summary(records)
    assert row["first_named"] == 0.5  # of the two answers that name an option
    assert row["scored_first_named"] == 1.0


def test_generation_is_the_steered_models_greedy_continuation(tokenizer, items):
    model = build_tiny_model("llama", tokenizer)
    artifact = dso_cli.fit("mean_match", model, tokenizer, items)
    scorer = OptionScorer(model, tokenizer)
    settings = GenerationSettings(max_new_tokens=6)
    records = generate_at_strengths(scorer, artifact, items[:3], [0.0, 1.0], settings)
    assert len(records) == 6 and [r["alpha"] for r in records] == [0.0] * 3 + [1.0] * 3
    for record, item in zip(records, items[:3] * 2, strict=True):
        ids = torch.tensor([scorer.encode(item).prompt_ids])
        if record["alpha"] == 0.0:
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)  # fmt: skip
        else:
            with artifact.apply(model, 1.0):
                out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                                     pad_token_id=tokenizer.pad_token_id)  # fmt: skip
        assert record["text"] == tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
        assert record["scored_choice"] in range(len(item["options"]))
        assert record["choice"] == parse_choice(record["text"], item["options"])


def test_spread_takes_whole_pairs_over_clusters():
    items = [{"cluster": c, "pair_id": f"{c}{p}", "k": k} for c in "abc" for p in range(3) for k in range(2)]
    chosen = spread(items, 6)
    assert [(it["cluster"], it["pair_id"]) for it in chosen[::2]] == [("a", "a0"), ("b", "b0"), ("c", "c0")]
    assert len(spread(items, 5)) == 6 and len(spread(items, 100)) == len(items)


def test_sampling_is_seeded_per_item(tokenizer, items):
    scorer = OptionScorer(build_tiny_model("llama", tokenizer), tokenizer)
    settings = GenerationSettings(max_new_tokens=8, do_sample=True, seed=3)
    first = generate_at_strengths(scorer, None, items[:2], [0.0], settings)
    again = generate_at_strengths(scorer, None, items[:2], [0.0], settings)
    assert [r["text"] for r in first] == [r["text"] for r in again]


@pytest.fixture(scope="module")
def run_dir(tiny_llama_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("generate") / "run"
    result = dso("train", "model=hf", f"model.name_or_path={tiny_llama_dir}", f"run_dir={run}",
                 "steering_method=mean_match", *SMALL)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return run


def test_dso_generate_writes_jsonl_table_and_agreement(run_dir, tmp_path):
    result = dso("generate", f"run_dir={run_dir}", "alpha=[0,1]", "generate.max_items=4", "generate.max_new_tokens=4")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(line) for line in (run_dir / "generations.jsonl").read_text().splitlines()]
    assert len(lines) == 8 and sorted({r["alpha"] for r in lines}) == [0.0, 1.0]
    assert len({r["cluster"] for r in lines}) == 2  # two whole pairs of two occupations
    assert all(set(r) >= {"id", "alpha", "text", "choice", "scored_choice"} for r in lines)
    table = (run_dir / "generations.md").read_text()
    assert "ω = 0" in table and "ω = 1" in table and "agreement" in table
    assert "agreement of generated and scored decisions at alpha=1" in result.stdout
    assert (run_dir / "generate_config.yaml").is_file()
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Who should lead the team?\nDescribe a nurse.\n")
    free = dso("generate", f"run_dir={run_dir}", "alpha=[1]", f"generate.prompts={prompts}",
               "generate.max_new_tokens=3")  # fmt: skip
    assert free.returncode == 0, free.stderr[-3000:]
    assert len((run_dir / "generations.jsonl").read_text().splitlines()) == 2


def test_dso_generate_refuses_bad_values(run_dir, tmp_path):
    assert_bad_input(dso("generate", f"run_dir={run_dir}", "generate.max_new_tokens=0"), "max_new_tokens")
    assert_bad_input(dso("generate", f"run_dir={run_dir}", f"generate.prompts={tmp_path / 'none.txt'}"),
                     "no such file")  # fmt: skip
