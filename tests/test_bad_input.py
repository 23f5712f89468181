"""Bad input through the CLI: exit 2, one line, no traceback, and no file of an existing run changed.

Hostile run directories (a checkpoint that unpickles code, a config whose ``_target_`` would run code)
are refused and execute nothing.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from tests.cli_runner import SMALL, assert_bad_input, dso


def snapshot(run_dir: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in run_dir.rglob("*") if p.is_file() and not p.name.endswith(".lock")):
        digest.update(str(path.relative_to(run_dir)).encode() + path.read_bytes())
    return digest.hexdigest()


class _Touch:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.path}",))


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_llama_dir) -> Path:
    """A quick closed-form run (the unsteered model as its artifact) to point bad commands at."""
    run_dir = tmp_path_factory.mktemp("bad") / "run"
    result = dso("train", "steering_method=none", "model=hf", f"model.name_or_path={tiny_llama_dir}",
                 f"run_dir={run_dir}", *SMALL)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["bias.test_pairs_per_occupation=8"], "bias_benchmark.test_pairs_per_occupation=8"),
        (["bias.seed=1"], "bias_benchmark.seed=1"),
    ],
)
def test_an_override_that_redraws_the_splits_is_refused(run, args, says):
    before = snapshot(run)
    assert_bad_input(dso("sweep", f"run_dir={run}", *args), says)
    assert snapshot(run) == before


def test_training_again_into_a_finished_run_is_refused(run, tiny_llama_dir):
    before = snapshot(run)
    result = dso("train", "steering_method=none", "model=hf", f"model.name_or_path={tiny_llama_dir}",
                 f"run_dir={run}", *SMALL)  # fmt: skip
    assert_bad_input(result, "already holds a trained artifact")
    assert snapshot(run) == before


def test_a_corrupted_artifact_is_one_line(run, tmp_path):
    corrupt = tmp_path / "corrupt"
    shutil.copytree(run, corrupt)
    tensors = corrupt / "artifact/tensors.safetensors"
    tensors.write_bytes(tensors.read_bytes()[: len(tensors.read_bytes()) // 2] or b"garbage")
    assert_bad_input(dso("sweep", f"run_dir={corrupt}"), "does not match its manifest's sha256")
    manifest = json.loads((corrupt / "artifact/manifest.json").read_text())
    del manifest["tensors_sha256"]  # as written by an older dso: the file itself is checked
    (corrupt / "artifact/manifest.json").write_text(json.dumps(manifest))
    assert_bad_input(dso("sweep", f"run_dir={corrupt}"), "not a readable safetensors file")
    (corrupt / "artifact/manifest.json").write_text("[1, 2]")
    assert_bad_input(dso("sweep", f"run_dir={corrupt}"), "not a steering artifact manifest")


def test_a_config_whose_target_would_run_code_is_refused(run, tmp_path):
    hostile, pwned = tmp_path / "hostile", tmp_path / "pwned"
    shutil.copytree(run, hostile)
    torch.save({"x": _Touch(pwned)}, tmp_path / "evil.pt")
    cfg = yaml.safe_load((hostile / "config.yaml").read_text())
    cfg["bias_benchmark"] = {"_target_": "torch.load", "_args_": [str(tmp_path / "evil.pt")], "weights_only": False}
    (hostile / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert_bad_input(dso("sweep", f"run_dir={hostile}"), "outside dso_cli")
    assert not pwned.exists()


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path, tiny_llama_dir):
    run_dir, pwned = tmp_path / "dso1", tmp_path / "pwned"
    result = dso("train", "model=hf", f"model.name_or_path={tiny_llama_dir}", f"run_dir={run_dir}", *SMALL,
                 "optimizer.steps=1", "optimizer.checkpoint_every=1")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    shutil.rmtree(run_dir / "artifact")
    torch.save({"step": 1, "evil": _Touch(pwned)}, run_dir / "checkpoint.pt")
    result = dso("train", "resume=true", f"run_dir={run_dir}")
    assert_bad_input(result, "refusing to load")
    assert not pwned.exists()
    before = snapshot(run_dir)
    result = dso("train", "model=hf", f"model.name_or_path={tiny_llama_dir}", f"run_dir={run_dir}", *SMALL)
    assert_bad_input(result, "resume=true continues it")  # an interrupted run is not silently started over
    assert snapshot(run_dir) == before


@pytest.mark.parametrize(
    ("arg", "says"),
    [
        ("seed=abc", "seed: Value 'abc' of type 'str' could not be converted to Integer"),
        ("seed=-1", "seed=-1 must be a whole number >= 0"),
        ("optimizer.lr=-1", "optimizer.lr must be greater than 0"),
        ("optimizer.lr=nan", "optimizer.lr="),
        ("optimizer.betas=[0.9,1.5]", "optimizer.betas=[0.9, 1.5] must be two numbers in [0, 1)"),
        ("optimizer.checkpoint_every=0", "optimizer.checkpoint_every must be at least 1"),
        ("optimizer.steps=2.7", "optimizer.steps: Value '2.7' of type 'float' could not be converted to Integer"),
        ("bias.n_train=abc", "bias.n_train: Value 'abc' of type 'str' could not be converted to Integer"),
        ("bias.test_pairs_per_occupation=-1", "bias.test_pairs_per_occupation=-1 must be a whole number >= 0"),
        ("optimizer.stepz=3", "optimizer.stepz: Key 'stepz' not in 'OptimizerOptions'"),
        ("sweep.bootstrap_reps=abc", "sweep.bootstrap_reps: Value 'abc'"),
    ],
)
def test_a_bad_value_is_one_line_before_anything_is_made(arg, says, tmp_path):
    verb = "sweep" if arg.startswith("sweep.") else "train"
    assert_bad_input(dso(verb, arg, f"run_dir={tmp_path / 'new'}"), says)
    assert not (tmp_path / "new").exists()


def _typed_leaves(schema: type, prefix: str = "") -> list[tuple[str, str]]:
    """(key, wrong value) for every int, float and bool setting of a verb's schema, sections included."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(schema)
    leaves = []
    for f in dataclasses.fields(schema):
        kind = hints[f.name]
        if dataclasses.is_dataclass(kind):
            leaves += _typed_leaves(kind, f"{prefix}{f.name}.")
        elif kind in (int, float, int | None, float | None):
            leaves.append((f"{prefix}{f.name}", "abc"))
        elif kind in (bool, bool | None):
            leaves.append((f"{prefix}{f.name}", "maybe"))
    return leaves


def _every_typed_key():
    """Every verb's own keys, and the keys all verbs share (``BaseSchema``) once, through ``train``."""
    from dso_cli.config.schema import SCHEMAS, BaseSchema

    shared = {key for key, _ in _typed_leaves(BaseSchema)}
    return [
        (verb, key, value)
        for verb, schema in SCHEMAS.items()
        for key, value in _typed_leaves(schema)
        if verb == "train" or key not in shared
    ]


@pytest.mark.parametrize(("verb", "key", "value"), _every_typed_key())
def test_every_typed_key_of_every_verb_rejects_a_wrong_type_naming_the_key(verb, key, value):
    """Composition itself rejects the value (the verb's schema), with the key in the one-line message."""
    from dso_cli.cli import validate
    from dso_cli.errors import DsoError

    extra = ["out=/tmp/x"] if verb == "export" and key != "out" else []
    with pytest.raises(DsoError) as err:
        validate(verb, [f"{key}={value}", *extra])
    assert str(err.value).startswith(f"{key}: ") and "\n" not in str(err.value)


def test_the_typed_key_table_covers_every_verb_and_section():
    covered = {(verb, key.split(".")[0]) for verb, key, _ in _every_typed_key()}
    assert len(_every_typed_key()) >= 50
    wanted = [("train", "optimizer"), ("sweep", "sweep"), ("eval", "eval"), ("compare", "compare"), ("prune", "prune"),
              ("export", "tolerance"), ("analyze", "analyze"), ("train", "model"), ("train", "scoring"),
              ("train", "heldout_text"), ("train", "extract"), ("train", "seed"), ("train", "train")]  # fmt: skip
    for verb, section in wanted:
        assert (verb, section) in covered, (verb, section)


GROUP_FLAG = {"bias_benchmark": "bias", "steering_method": "steering_method", "reward": "reward", "logger": "logger"}


def _group_typed_keys():
    """(group, option, key, wrong value) for every int, float and bool key of every option's schema."""
    from dso_cli.config.group_schemas import GROUP_SCHEMAS

    return [
        (group, option, key, value)
        for group, options in GROUP_SCHEMAS.items()
        if group in GROUP_FLAG
        for option, schema in options.items()
        for key, value in _typed_leaves(schema)
    ]


@pytest.mark.parametrize(("group", "option", "key", "value"), _group_typed_keys())
def test_every_typed_key_of_every_group_option_rejects_a_wrong_type(group, option, key, value):
    from dso_cli.cli import validate
    from dso_cli.errors import DsoError

    flag = GROUP_FLAG[group]
    with pytest.raises(DsoError) as err:
        validate("train", [f"{flag}={option}", f"{flag}.{key}={value}"])
    assert str(err.value).startswith(f"{flag}.{key}: ") and "\n" not in str(err.value)


@pytest.mark.parametrize("group", ["bias_benchmark", "steering_method", "reward", "logger", "capability"])
def test_every_shipped_group_option_has_a_schema_that_sets_every_key(group):
    """A new option without a schema would be an open mapping again; a schema key the YAML does not set
    would be a MISSING value at run time."""
    from omegaconf import OmegaConf

    from dso_cli.config.files import conf_dir, group_config, group_options
    from dso_cli.config.group_schemas import schema_for

    for option in group_options(group):
        assert schema_for(group, option) is not None, option
        assert f"/schema/{group}/{option}@_here_" in (conf_dir() / group / f"{option}.yaml").read_text()
        assert not OmegaConf.missing_keys(group_config(group, option)), option


def test_an_unknown_key_of_a_group_option_is_refused_naming_the_option_schema():
    from dso_cli.cli import validate
    from dso_cli.errors import DsoError

    with pytest.raises(DsoError, match=r"^steering_method.top_kk: Key 'top_kk' not in 'ITISchema'$"):
        validate("train", ["steering_method=iti", "steering_method.top_kk=3"])
    with pytest.raises(DsoError, match=r"^bias.n_trian: "):
        validate("train", ["bias.n_trian=3"])


def test_compare_options_and_eval_sets_are_typed_by_their_option_schema():
    from omegaconf import OmegaConf

    from dso_cli.cli import compose_config
    from dso_cli.commands.compare import method_options
    from dso_cli.commands.eval import with_overrides
    from dso_cli.config.files import group_config
    from dso_cli.errors import DsoError

    cfg = compose_config("compare", ["++compare.options.caa.select_alpha=abc"])
    with pytest.raises(DsoError, match=r"^compare.options.caa.select_alpha: Value 'abc'"):
        method_options(cfg, "caa")
    assert method_options(compose_config("compare", ["++compare.options.caa.layers=[3]"]), "caa").layers == [3]
    user = OmegaConf.create({"capability": {"max_items": "abc"}})
    with pytest.raises(DsoError, match=r"^capability.max_items: Value 'abc'"):
        with_overrides(group_config("capability", "mmlu"), user, "capability", ["max_items"])
