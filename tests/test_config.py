"""Hydra configs compose for every verb and option; strength grids parse; run lookup and merging."""

import os
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from dso_cli.cli import GROUPS, conf_dir, group_options, rewrite_aliases
from dso_cli.errors import DsoError
from dso_cli.pipeline.runs import find_latest_train_run, merge_run_config, parse_strengths


def composed(verb, overrides=()):
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose(config_name=verb, overrides=list(overrides))


@pytest.mark.parametrize("verb", ["train", "sweep", "report", "eval", "compare", "prune", "export"])
def test_every_verb_composes_with_all_groups(verb):
    cfg = composed(verb)
    assert cfg.verb == verb
    for group in GROUPS:
        assert group in cfg
    assert cfg.model.name == "smollm2_135m" and cfg.bias_benchmark.name == "occupation"


@pytest.mark.parametrize("group", GROUPS)
def test_every_group_option_composes(group):
    for option in group_options(group):
        cfg = composed("train", [f"{group}={option}"])
        assert cfg[group] is not None
        if group == "model" and option != "hf":
            assert cfg.model.name == option and cfg.model.name_or_path


@pytest.mark.parametrize("group", ["optimizer", "reward", "bias_benchmark"])
def test_the_python_api_defaults_are_the_cli_defaults(group):
    from dso_cli.config.files import default_option, group_config

    assert OmegaConf.to_container(group_config(group, default_option(group)), resolve=True) == (
        OmegaConf.to_container(composed("train")[group], resolve=True)
    )


def test_bias_alias():
    assert rewrite_aliases(["bias=occupation", "bias.n_train=20", "+bias.x=1", "model=gpt2"]) == [
        "bias_benchmark=occupation", "bias_benchmark.n_train=20", "+bias_benchmark.x=1", "model=gpt2"
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("value", "grid"),
    [("0:1:0.25", [0, 0.25, 0.5, 0.75, 1]), ("0:1:0.1", [round(0.1 * i, 10) for i in range(11)]),
     ([1, 0, 0.5], [0, 0.5, 1]), (0.5, [0.5]), ("0.3", [0.3]), ("0:1:0.3", [0, 0.3, 0.6, 0.9])],
)  # fmt: skip
def test_parse_alpha(value, grid):
    assert parse_strengths(value) == pytest.approx(grid)


@pytest.mark.parametrize("bad", ["1:0:oops", "1:0:0.1", "0:1:0", "0:1", "a", [0, "x"], "-1", "nan"])
def test_parse_alpha_rejects(bad):
    with pytest.raises(DsoError):
        parse_strengths(bad)


def fake_run(root: Path, name: str, name_or_path: str, bench: str, mtime: float) -> Path:
    run = root / name
    (run / "artifact").mkdir(parents=True)
    OmegaConf.save({"model": {"name_or_path": name_or_path}, "bias_benchmark": {"name": bench}}, run / "config.yaml")
    manifest = run / "artifact" / "manifest.json"
    manifest.write_text("{}")
    os.utime(manifest, (mtime, mtime))
    return run


def test_latest_run_of_the_same_model_and_benchmark(tmp_path):
    now = time.time()
    fake_run(tmp_path, "a", "m1", "occupation", now - 30)
    newest = fake_run(tmp_path, "d1/b", "m1", "occupation", now - 10)
    fake_run(tmp_path, "c", "m2", "occupation", now)
    (tmp_path / "untrained").mkdir()
    OmegaConf.save(
        {"model": {"name_or_path": "m1"}, "bias_benchmark": {"name": "occupation"}}, tmp_path / "untrained/config.yaml"
    )
    assert find_latest_train_run(tmp_path, "m1", "occupation") == newest
    with pytest.raises(DsoError, match="no trained run of m3"):
        find_latest_train_run(tmp_path, "m3", "occupation")


def test_merge_keeps_the_run_sections_and_explicit_overrides():
    run_cfg = OmegaConf.create(
        {"model": {"name": "tiny", "device": "cpu", "dtype": "auto"}, "scoring": {"batch_size": 4}}
    )
    cfg = OmegaConf.create(
        {"model": {"name": "default", "device": "auto", "dtype": "bfloat16"}, "scoring": {"batch_size": 16}, "alpha": 1}
    )
    merged = merge_run_config(run_cfg, cfg, ["model.dtype=bfloat16", "alpha=1"], ["model", "scoring"])
    assert merged.model == {"name": "tiny", "device": "cpu", "dtype": "bfloat16"}
    assert merged.scoring.batch_size == 4 and merged.alpha == 1
