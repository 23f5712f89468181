"""One definition per setting: the composed defaults are the options classes' defaults, every YAML
preset only overrides them, and the trainer, the API and the CLI build the same settings."""

from dataclasses import asdict, fields, is_dataclass

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import MISSING, OmegaConf

from dso_cli.benchmarks import occupation
from dso_cli.config.fields import default_of, help_of
from dso_cli.config.files import conf_dir, default_option, group_options
from dso_cli.config.group_schemas import IDENTITY, OPTIONS
from dso_cli.config.schema import SCHEMAS
from dso_cli.errors import DsoError
from dso_cli.rl.config import TrainConfig
from dso_cli.rl.rewards import DecisionBalanceReward
from dso_cli.steering.caa import CAA

GROUPED = ("bias_benchmark", "steering_method", "optimizer", "reward", "logger")


def composed(verb, overrides=()):
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose(config_name=verb, overrides=list(overrides))
    return OmegaConf.to_container(cfg, resolve=False)


def class_defaults(cls) -> dict:
    """Every key of ``cls`` with a default (nested sections expanded); keys without one left out."""
    out = {}
    for spec in fields(cls):
        value = default_of(spec)
        if value is MISSING:
            continue
        out[spec.name] = class_defaults(type(value)) if is_dataclass(value) else value
    return out


def assert_holds(node: dict, defaults: dict, where: str) -> None:
    for key, value in defaults.items():
        assert node.get(key) == value, f"{where}.{key}: composed {node.get(key)!r}, class default {value!r}"


@pytest.mark.parametrize("verb", sorted(SCHEMAS))
def test_a_verbs_composed_defaults_are_its_classes_defaults(verb):
    cfg = composed(verb)
    assert_holds(cfg, class_defaults(SCHEMAS[verb]), verb)
    for group in GROUPED:  # the default option of every group: its options class's defaults
        options = OPTIONS[group][default_option(group)]
        section = {k: v for k, v in cfg[group].items() if k not in IDENTITY[group]}
        assert section == asdict(options()), group


@pytest.mark.parametrize("group", sorted(OPTIONS))
def test_presets_only_override(group):
    """A preset sets its identity keys and what differs from the class; repeating a default would let
    the two drift apart."""
    for option in group_options(group):
        preset = OmegaConf.to_container(OmegaConf.load(conf_dir() / group / f"{option}.yaml"))
        preset.pop("defaults", None)
        defaults = asdict(OPTIONS[group][option]())
        repeated = [k for k, v in preset.items() if k in defaults and k not in IDENTITY[group] and v == defaults[k]]
        assert not repeated, f"conf/{group}/{option}.yaml repeats its class's defaults for {repeated}"


def test_model_presets_only_override():
    from dso_cli.config.schema import ModelSchema

    defaults = {k: v for k, v in class_defaults(ModelSchema).items()}
    for option in group_options("model"):
        preset = OmegaConf.to_container(OmegaConf.load(conf_dir() / "model" / f"{option}.yaml"))
        repeated = [k for k, v in preset.items() if k in defaults and v == defaults[k]]
        assert not repeated, f"conf/model/{option}.yaml repeats ModelSchema's defaults for {repeated}"


def test_every_setting_has_help():
    classes = [*SCHEMAS.values(), *(cls for options in OPTIONS.values() for cls in options.values())]
    seen = set()
    while classes:
        cls = classes.pop()
        if cls in seen:
            continue
        seen.add(cls)
        for spec in fields(cls):
            value = default_of(spec)
            if is_dataclass(value):
                classes.append(type(value))
            elif spec.name not in ("verb", "_target_", "name", "model", *GROUPED):
                assert help_of(cls, spec.name), f"{cls.__name__}.{spec.name} has no help text"


def test_the_trainer_the_api_and_the_cli_train_the_same_settings():
    from dso_cli.api import _training
    from dso_cli.pipeline.fitting import train_config
    from dso_cli.rl.config import TrainConfig
    from dso_cli.rl.rewards import DecisionBalanceReward

    cli = train_config(OmegaConf.create(composed("train")))
    assert cli == TrainConfig()
    api = _training({})
    assert api.config == TrainConfig() and api.reward == DecisionBalanceReward()  # fair per decision by default
    shipped = TrainConfig()
    assert shipped.unambiguous_per_batch == 16 and shipped.accuracy_weight == 3.0 and shipped.lr_schedule == "cosine"
    assert DecisionBalanceReward().occupation_weight == 3.0


def test_the_shipped_reward_presets_are_the_reward_classes_defaults():
    from dso_cli.rl.rewards import DecisionBalanceReward
    from dso_cli.targets import instantiate_checked

    cfg = composed("train", ["reward=decision_balance"])
    assert instantiate_checked(OmegaConf.create(cfg["reward"]), "reward") == DecisionBalanceReward()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: TrainConfig(ppo_clip=0), r"optimizer.ppo_clip must be greater"),
        (lambda: DecisionBalanceReward(pair_weight=-1), r"reward.pair_weight"),
        (lambda: occupation.build(n_trian=2), r"bias.n_trian"),
        (lambda: CAA(top_k=2), r"steering_method.top_k"),
    ],
)  # fmt: skip
def test_range_and_key_checks_live_with_the_class(make, message):
    with pytest.raises(DsoError, match=message):
        make()


def test_the_configuration_reference_page_is_generated_from_the_classes():
    from pathlib import Path

    from dso_cli.config.reference import render_reference

    page = Path(__file__).resolve().parent.parent / "docs" / "reference" / "config.md"
    assert page.read_text() == render_reference(), "run scripts/config_reference.py (make docs)"
    assert "| `optimizer.kl_text_coef` | float \\| None | `20.0` |" in page.read_text()
