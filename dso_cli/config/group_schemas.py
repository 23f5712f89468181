"""The options of every config group whose keys differ by option: one dataclass per option, holding
each key's default, help text and (where a range applies) its check.

The builders, methods and rewards take these classes (``occupation.build`` makes an
:class:`OccupationOptions`, :class:`~dso_cli.rl.rewards.DecisionBalanceReward` *is* a
:class:`DecisionBalanceOptions`), so a default lives here once. Their schemas in Hydra's ConfigStore
(``schema/<group>/<option>``) add the keys that say which preset it is (``_target_``, ``name``):
``conf/<group>/<option>.yaml`` starts its defaults list with ``/schema/<group>/<option>@_here_`` and
sets only those and what it overrides, so a wrong type or an unknown key (``bias.n_train=abc``,
``bias.n_trian=8``, ``steering_method.top_k=1.5``, ``logger.mode=3``) fails at composition, naming the
key. Files read outside a composition (a mixture's members, ``dso eval``'s sets, ``dso compare``'s
methods) are checked against the same schema by :func:`dso_cli.config.files.group_config`. A group
option a user adds in a config directory of their own, without a schema, stays an open mapping that
its builder checks.
"""

from __future__ import annotations

from dataclasses import dataclass, field, make_dataclass
from typing import Any, ClassVar

from omegaconf import MISSING

from dso_cli.config.fields import Counts, setting
from dso_cli.config.optimizer import OptimizerOptions
from dso_cli.errors import DsoError

# --- bias_benchmark ---------------------------------------------------------------------------------


@dataclass
class OccupationOptions(Counts):
    section: ClassVar[str] = "bias"

    n_train: int = setting(600, "ambiguous training items")
    n_train_unambiguous: int = setting(300, "unambiguous training items (the KL anchor)")
    val_pairs_per_occupation: int = setting(4, "pairs of each kind per training occupation in val")
    test_pairs_per_occupation: int = setting(4, "... and in test (and heldout_occupations)")
    heldout_template_pairs_per_occupation: int | None = setting(12, "null: test_pairs_per_occupation")
    pairs_per_comparison: int = setting(
        4,
        "attributes with more than two groups: an occupation's evaluation pairs come in runs of this many "
        "that compare the same two groups through different name pairs (so a comparison is not one name pair)",
    )
    heldout_occupations: list[str] = setting(
        ["construction worker", "developer", "lawyer", "manager", "accountant", "cashier", "librarian", "receptionist"],
        "occupations kept out of train/val/test",
    )
    formats: list[str] | None = setting(
        None,
        "answer-format families of train/val/test (null: every family not in heldout_formats): word, name, "
        "answer_is, letters, numbers, letters_reversed, yes_no, json, cloze; each pair draws one",
    )
    format_twins: int = setting(
        2, "train: each ambiguous scenario asked in this many answer formats (reward.format_weight compares them)"
    )
    heldout_formats: list[str] = setting(
        ["letters", "answer_is"], "answer-format families only heldout_templates asks in ([]: the training ones)"
    )
    seed: int = setting(0, "seed of every split's draw")
    modality: str = setting("auto", "auto | text | image")
    source: str = setting("auto", "auto (image_dir if given, else the hub) | image_dir | social_counterfactuals")
    image_dir: str | None = setting(None, "<occupation>/<male|female>/*.jpg")
    image_layout: str = setting("pair", "pair | side_by_side")
    hub_dataset: str = setting(
        "Intel/SocialCounterfactuals", "the SocialCounterfactuals hub id, or a local copy of its parquet files"
    )
    max_hub_rows: int | None = setting(None, "rows read from the hub (null: all)")
    hub_revision: str | None = setting(None, "hub commit (null: the revision pinned at first download)")
    unknown_option: bool = setting(False, 'offer a third, "can\'t tell" answer on every item (text only)')
    attribute: Any = setting(
        "gender",
        "gender | race | race_x_gender: what tells the two people apart (race: first names of two ethnicities "
        "from BBQ's vocabulary, gender matched; text only), or a list ([gender,race]): one benchmark over "
        "several attributes",
    )


@dataclass
class SynthBiasOptions(Counts):
    section: ClassVar[str] = "bias"

    path: str | None = setting(None, "a local synthbias_data.csv (null: the cached download of url)")
    url: str = setting(
        "https://raw.githubusercontent.com/apple/ml-synthbias/6db30ffb573178f578df60c5a604a205e47f8d56/data/synthbias_data.csv",
        "the SynthBias CSV, pinned to a commit",
    )
    sha256: str | None = setting(
        "6bf346256a12eeb959dfbe610948694e8da26c74306bb202c2f6cd177af84588", "of the file at url (null: not checked)"
    )
    n_train: int = setting(600, "ambiguous training items (two per sentence: both option orders)")
    n_train_unambiguous: int = setting(300, "unambiguous training items")
    val_pairs_per_occupation: int = setting(1, "pairs per occupation in val")
    test_pairs_per_occupation: int = setting(2, "pairs per occupation in test")
    seed: int = setting(0, "seed of the split")


@dataclass
class BBQOptions(Counts):
    section: ClassVar[str] = "bias"

    attribute: Any = setting(
        "gender",
        "gender | race | race_x_gender: BBQ's Gender_identity, Race_ethnicity or Race_x_gender category, "
        "or a list ([gender,race]): one benchmark over several",
    )
    data_file: str | None = setting(None, "another BBQ-format .jsonl (of the one attribute's category)")
    n_train: int = setting(600, "ambiguous training items")
    n_train_unambiguous: int = setting(300, "disambiguated training items")
    val_instances_per_question: int = setting(1, "template instances per question in val")
    test_instances_per_question: int = setting(2, "template instances per question in test")
    seed: int = setting(0, "seed of the split")


@dataclass
class WinoBiasOptions(Counts):
    section: ClassVar[str] = "bias"

    data_dir: str | None = setting(None, "a folder with WinoBias's {pro,anti}_stereotyped_type{1,2}.txt.{dev,test}")
    val_fraction: float = setting(0.2, "share of the dev sentences dealt to val")
    test_pairs_per_type: int | None = setting(100, "null: all")
    seed: int = setting(0, "seed of the split")


@dataclass
class DecisionsOptions(Counts):
    section: ClassVar[str] = "bias"

    path: str | None = setting(
        None, "a .jsonl, .csv or .parquet file of decision items (schema: benchmarks/decisions.py)"
    )
    hub_id: str | None = setting(None, "or a hub dataset of the same columns, read through datasets")
    hub_split: str = setting("train", "the hub dataset's split to read")
    hub_revision: str | None = setting(None, "hub commit, branch or tag")
    val_pairs_per_cluster: int = setting(1, "without a split column: pairs per cluster dealt to val")
    test_pairs_per_cluster: int = setting(1, "... and to test (the rest is train)")
    seed: int = setting(0, "seed of the split")


@dataclass
class MixtureOptions(Counts):
    section: ClassVar[str] = "bias"

    benchmarks: list[str] = setting(["occupation", "synthbias"], "the members (conf/bias_benchmark/ names)")
    modality: str = setting("auto", "reaches the members with images")
    attribute: Any = setting(None, "reaches the members with an attribute (race, [gender,race])")
    path: str | None = setting(None, "reaches the members with a path (SynthBias's CSV)")
    seed: int | None = setting(None, "null below: each member's own value")
    n_train: int | None = setting(None, "ambiguous training items per member (null: the member's own)")
    n_train_unambiguous: int | None = setting(None, "unambiguous training items per member")
    val_pairs_per_occupation: int | None = setting(None, "pairs per cluster in each member's val")
    test_pairs_per_occupation: int | None = setting(None, "pairs per cluster in each member's test")


# --- steering_method --------------------------------------------------------------------------------


@dataclass
class DSOOptions:
    stock_export: bool = setting(False, "keep b = 0 on the norms whose shift a stock checkpoint cannot hold")
    depth: list[float] = setting(
        [0.0, 1.0],
        "the decoder layers whose norms are steered, as fractions [start, end) of the backbone's depth "
        "([0, 1]: every norm, the final one included, as in the paper; [0, 0.5]: the first half); "
        "model.norm_modules, when set, names the norms instead",
    )

    def __post_init__(self) -> None:
        depth = self.depth
        if isinstance(depth, (str, bytes)) or not hasattr(depth, "__len__") or len(depth) != 2:
            raise DsoError(f"steering_method.depth={depth!r} must be two fractions [start, end]")
        try:
            start, end = (float(x) for x in depth)
        except (TypeError, ValueError):
            raise DsoError(f"steering_method.depth={list(depth)!r} must be two numbers") from None
        if not 0.0 <= start < end <= 1.0:
            raise DsoError(f"steering_method.depth={[start, end]} must satisfy 0 <= start < end <= 1")
        self.depth = [start, end]


@dataclass
class CAAOptions:
    layers: list[int] | None = setting(None, "decoder layers (negative: from the end); null: chosen on val")
    candidate_layers: list[int] | None = setting(None, "null: five evenly spaced interior layers")
    select_alpha: float = setting(2.0, "strength at which candidate layers are compared")


@dataclass
class ITIOptions(Counts):
    section: ClassVar[str] = "steering_method"

    top_k: int = setting(8, "heads steered")
    seed: int = setting(0, "of the probes' cross-validation")


@dataclass
class LeaceOptions:
    layers: list[int] | None = setting(None, "null: the middle layer")


@dataclass
class AssociationOptions:
    layers: list[int] | None = setting(None, "decoder layers whose outputs are steered (null: the middle layer)")


@dataclass
class PromptingOptions:
    instruction: str | None = setting(None, "null: the built-in instruction")


# --- reward, logger, capability -----------------------------------------------------------------------


@dataclass
class RewardOptions:
    unknown_reward: float = setting(0.0, 'reward of an "unknown" option')


@dataclass
class DecisionBalanceOptions(RewardOptions):
    item_divergence: str = setting("kl", "kl (KL(uniform || pi) of the two people) | gap (|P(pro) - P(anti)|)")
    order_weight: float = setting(1.0, "weight of the counterbalanced pairs' order gap")
    pair_weight: float = setting(3.0, "weight of the counterbalanced pairs' gender gap")
    format_weight: float = setting(
        3.0, "weight of the disagreement between answer formats of one scenario (needs bias.format_twins > 1)"
    )
    position_weight: float = setting(10.0, "weight of the batch's mean lean to the first-listed person")
    occupation_weight: float = setting(3.0, "weight of the paper's per-occupation gap")
    occupation_divergence: str = setting(
        "gap",
        "gap (|P(pro|o) - P(anti|o)|: a pull of constant size) | kl (KL(uniform || the occupation's mean "
        "decision): a pull that grows with the lean, so it does not overshoot)",
    )

    def __post_init__(self) -> None:
        for name in ("item_divergence", "occupation_divergence"):
            if getattr(self, name) not in ("kl", "gap"):
                raise DsoError(f"reward.{name} must be kl or gap, not {getattr(self, name)!r}")
        for name in ("order_weight", "pair_weight", "format_weight", "position_weight", "occupation_weight"):
            if not getattr(self, name) >= 0:
                raise DsoError(f"reward.{name} must be at least 0, not {getattr(self, name)}")


@dataclass
class WandbLoggerOptions:
    project: str = setting("dso", "the wandb project")
    mode: str = setting("offline", "offline | online | disabled")


@dataclass
class MmluOptions(Counts):
    section: ClassVar[str] = "capability"

    path: str = setting("cais/mmlu", "hub id or local dataset")
    subset: str | None = setting("all", "the dataset's configuration (all: every subject)")
    split: str = setting("test", "the dataset's split")
    data_files: Any = setting(None, "a path, a list of paths, or null (the hub)")
    max_items: int | None = setting(2000, "a seeded random subset (null: all)")
    seed: int = setting(0, "seed of the max_items subset")


@dataclass
class MmluDevOptions(Counts):
    section: ClassVar[str] = "capability"

    max_per_subject: int | None = setting(None, "dev questions per subject (null: all five)")


@dataclass
class MmmuOptions(Counts):
    section: ClassVar[str] = "capability"

    path: str = setting("MMMU/MMMU", "hub id or local dataset")
    subjects: list[str] | None = setting(None, "null: all 30")
    split: str = setting("validation", "the dataset's split")
    data_files: Any = setting(None, "a path, a list of paths, or null (the hub)")
    max_items: int | None = setting(None, "a seeded random subset (null: all)")


@dataclass
class NeutralTextOptions(Counts):
    section: ClassVar[str] = "capability"

    path: str | None = setting(None, "one passage per line (null: the held-out Lee articles)")
    max_passages: int | None = setting(50, "passages used (null: all)")
    max_tokens: int = setting(128, "tokens per passage")


@dataclass
class NoOptions:
    """An option without keys of its own (``mean_match``, ``none``, the ``csv`` logger)."""


OPTIONS: dict[str, dict[str, type]] = {
    "optimizer": {"adam": OptimizerOptions},
    "bias_benchmark": {
        "occupation": OccupationOptions,
        "synthbias": SynthBiasOptions,
        "bbq": BBQOptions,
        "winobias": WinoBiasOptions,
        "decisions": DecisionsOptions,
        "mixture": MixtureOptions,
    },
    "steering_method": {
        "dso": DSOOptions,
        "caa": CAAOptions,
        "iti": ITIOptions,
        "mean_match": NoOptions,
        "leace": LeaceOptions,
        "projection": AssociationOptions,
        "leace_association": AssociationOptions,
        "prompting": PromptingOptions,
        "none": NoOptions,
    },
    "reward": {"stereotype_flip": RewardOptions, "abs_gap": RewardOptions, "decision_balance": DecisionBalanceOptions},
    "logger": {"csv": NoOptions, "none": NoOptions, "wandb": WandbLoggerOptions},
    "capability": {
        "mmlu": MmluOptions,
        "mmlu_dev": MmluDevOptions,
        "mmmu": MmmuOptions,
        "neutral_text": NeutralTextOptions,
    },
}
"""``group -> option -> options class``."""

IDENTITY: dict[str, dict[str, str]] = {
    "optimizer": {},
    "bias_benchmark": {"_target_": "the builder (a callable inside dso_cli, or in allow_targets)",
                       "name": "the benchmark's name in run directories and CSV rows"},
    "steering_method": {"_target_": "the SteeringMethod class (inside dso_cli, or in allow_targets)",
                        "name": "the method's registered name"},
    "reward": {"_target_": "the reward class (inside dso_cli, or in allow_targets)"},
    "logger": {"name": "csv | wandb | none"},
    "capability": {"_target_": "the builder (a callable inside dso_cli, or in allow_targets)",
                   "name": "the set's name in eval.csv"},
}  # fmt: skip
"""The keys a preset sets to say what it is (no default: every preset sets them)."""


def _schema(group: str, option: str, options: type) -> type:
    """``options`` plus the group's identity keys: what ``schema/<group>/<option>`` holds."""
    identity = IDENTITY[group]
    if not identity:
        return options
    stem = "".join(part.title() for part in option.split("_")) if options is NoOptions else options.__name__
    name = stem.removesuffix("Options") + "Schema"
    keys = [(key, str, field(default=MISSING, metadata={"help": text})) for key, text in identity.items()]
    return make_dataclass(name, keys, bases=(options,), namespace={"__module__": __name__})


GROUP_SCHEMAS: dict[str, dict[str, type]] = {
    group: {option: _schema(group, option, cls) for option, cls in options.items()}
    for group, options in OPTIONS.items()
}
"""``group -> option -> schema``: stored as ``schema/<group>/<option>`` in Hydra's ConfigStore."""


def schema_for(group: str, option: str) -> type | None:
    return GROUP_SCHEMAS.get(group, {}).get(option)
