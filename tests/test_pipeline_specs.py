"""The pipeline's typed inputs: each is read from a composed config in one place, carries the shipped
defaults, and refuses what it cannot hold; the scorer takes its options as one value."""

from dataclasses import asdict

import pytest
from hydra import compose, initialize_config_dir

from dso_cli.benchmarks import neutral_text
from dso_cli.cli import conf_dir
from dso_cli.errors import DsoError
from dso_cli.pipeline.inputs import activation_store, heldout_corpus
from dso_cli.pipeline.specs import CacheSettings, HeldoutText, ModelSetup, RunLocation
from dso_cli.pipeline.trained_run import resolve_run_dir
from dso_cli.scoring import OptionScorer
from dso_cli.scoring.options import ScoringOptions
from tests.conftest import build_tiny_model


def composed(verb, overrides=()):
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose(config_name=verb, overrides=list(overrides))


def test_scoring_options_defaults_are_the_shipped_scoring_section():
    cfg = composed("sweep")
    shipped = dict(cfg.scoring)
    defaults = asdict(ScoringOptions())
    assert set(shipped) == set(defaults) - {"chat_template_kwargs"}
    assert {k: defaults[k] for k in shipped} == shipped


def test_scoring_options_refuse_an_unknown_key_by_name():
    with pytest.raises(TypeError, match="prefix_trees"):
        ScoringOptions.from_mapping({"prefix_trees": False})


def test_scorer_takes_options_and_overrides(tokenizer):
    model = build_tiny_model("llama", tokenizer)
    options = ScoringOptions(batch_size=3, system_prompt="Be fair.")
    scorer = OptionScorer(model, tokenizer, options, prefix_tree=False)
    assert scorer.options.batch_size == 3 and scorer.options.prefix_tree is False
    assert scorer.batch_size == 3 and scorer.prefix_tree is False and scorer.system_prompt == "Be fair."
    assert options.prefix_tree is True  # the caller's value is not changed
    with pytest.raises(TypeError, match="batchsize"):
        OptionScorer(model, tokenizer, batchsize=2)


def test_model_setup_reads_model_scoring_and_seed():
    cfg = composed("train", ["seed=7", "scoring.batch_size=5", "model.norm_modules=[a,b]",
                             "+model.chat_template_kwargs.enable_thinking=false"])  # fmt: skip
    setup = ModelSetup.from_config(cfg)
    assert setup.seed == 7 and setup.scoring.batch_size == 5
    assert setup.scoring.chat_template_kwargs == {"enable_thinking": False}
    assert setup.model["name_or_path"] == cfg.model.name_or_path
    assert setup.norm_modules == ["a", "b"]
    assert ModelSetup.from_config(composed("train", ["model.norm_modules=layers.*norm"])).norm_modules == "layers.*norm"


def test_heldout_text_refuses_the_runs_training_text():
    cfg = composed("sweep", ["heldout_text.max_passages=3"])
    text = HeldoutText.from_config(cfg)
    assert text.max_passages == 3 and text.batch_size == cfg.heldout_text.batch_size
    assert len(heldout_corpus(text).passages) == 3
    measured = neutral_text.build(max_passages=3).passages
    clash = HeldoutText(max_passages=3, trained_on=(measured[1],))
    with pytest.raises(DsoError, match="shares 1 passages"):
        heldout_corpus(clash)


def test_heldout_text_records_training_passages_only_when_the_run_used_them():
    on = HeldoutText.from_config(composed("sweep", ["optimizer.kl_text_passages=2"]))
    off = HeldoutText.from_config(composed("sweep", ["optimizer.kl_text_passages=0"]))
    assert len(on.trained_on) > 100 and off.trained_on == ()


def test_cache_settings_and_store(tmp_path, tokenizer, items):
    assert CacheSettings.from_config(composed("train")).root is None
    cache = CacheSettings.from_config(composed("train", [f"extract.cache={tmp_path}", "extract.shard_items=4"]))
    assert cache.root == str(tmp_path) and cache.shard_items == 4
    scorer = OptionScorer(build_tiny_model("llama", tokenizer), tokenizer)
    assert activation_store(scorer, items, "occupation").cache is None
    assert activation_store(scorer, items, "occupation", cache).cache is not None


def test_run_location(tmp_path):
    cfg = composed("sweep", [f"run_dir={tmp_path}"])
    location = RunLocation.from_config(cfg)
    assert location.run_dir == tmp_path and location.benchmark == "occupation"
    assert resolve_run_dir(location) == tmp_path
    with pytest.raises(DsoError, match="does not exist"):
        resolve_run_dir(RunLocation(tmp_path / "gone", tmp_path, "m", "occupation"))
    with pytest.raises(DsoError):
        resolve_run_dir(RunLocation(None, tmp_path, "m", "occupation"))  # no train run under it
