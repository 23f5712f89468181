"""Typed schemas of the config groups whose keys differ by option: one dataclass per option.

``conf/<group>/<option>.yaml`` starts its defaults list with ``/schema/<group>/<option>@_here_``, so a
wrong type or an unknown key of the chosen option (``bias.n_train=abc``, ``bias.n_trian=8``,
``steering_method.top_k=1.5``, ``logger.mode=3``) fails at composition, naming the key, exactly like the
verbs' own sections (:mod:`dso_cli.config.schema`). Files read outside a composition (a mixture's
members, ``dso eval``'s sets, ``dso compare``'s methods) are checked against the same schema by
:func:`dso_cli.config.files.group_config`. A group option a user adds in a config directory of their
own, without a schema, stays an open mapping that its builder checks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from omegaconf import MISSING

# --- bias_benchmark ---------------------------------------------------------------------------------


@dataclass
class BenchmarkSchema:
    _target_: str = MISSING  # the builder (a callable inside dso_cli, or in allow_targets)
    name: str = MISSING  # the benchmark's name in run directories and CSV rows


@dataclass
class OccupationSchema(BenchmarkSchema):
    n_train: int = MISSING  # ambiguous training items
    n_train_unambiguous: int = MISSING  # unambiguous training items (the KL anchor)
    val_pairs_per_occupation: int = MISSING
    test_pairs_per_occupation: int = MISSING
    heldout_template_pairs_per_occupation: int | None = MISSING  # null: test_pairs_per_occupation
    heldout_occupations: list[str] = MISSING  # occupations kept out of train/val/test
    seed: int = MISSING
    modality: str = MISSING  # auto | text | image
    source: str = MISSING  # auto (image_dir if given, else the hub) | image_dir | social_counterfactuals
    image_dir: str | None = MISSING  # <occupation>/<male|female>/*.jpg
    image_layout: str = MISSING  # pair | side_by_side
    hub_dataset: str = MISSING  # the SocialCounterfactuals hub id, or a local copy of its parquet files
    max_hub_rows: int | None = MISSING  # rows read from the hub (null: all)
    hub_revision: str | None = MISSING  # hub commit (null: the revision pinned at first download)
    unknown_option: bool = MISSING  # offer a third, "can't tell" answer on every item (text only)


@dataclass
class SynthBiasSchema(BenchmarkSchema):
    path: str | None = MISSING  # a local synthbias_data.csv (null: the cached download of url)
    url: str = MISSING
    sha256: str | None = MISSING  # of the file at url (null: not checked)
    n_train: int = MISSING
    n_train_unambiguous: int = MISSING
    val_pairs_per_occupation: int = MISSING
    test_pairs_per_occupation: int = MISSING
    seed: int = MISSING


@dataclass
class BBQSchema(BenchmarkSchema):
    data_file: str | None = MISSING  # another BBQ-format .jsonl
    n_train: int = MISSING
    n_train_unambiguous: int = MISSING
    val_instances_per_question: int = MISSING
    test_instances_per_question: int = MISSING
    seed: int = MISSING


@dataclass
class WinoBiasSchema(BenchmarkSchema):
    data_dir: str | None = MISSING  # a folder with WinoBias's {pro,anti}_stereotyped_type{1,2}.txt.{dev,test}
    val_fraction: float = MISSING
    test_pairs_per_type: int | None = MISSING  # null: all
    seed: int = MISSING


@dataclass
class DecisionsSchema(BenchmarkSchema):
    path: str | None = MISSING  # a .jsonl, .csv or .parquet file of decision items (schema: benchmarks/decisions.py)
    hub_id: str | None = MISSING  # or a hub dataset of the same columns, read through datasets
    hub_split: str = MISSING  # the hub dataset's split to read
    hub_revision: str | None = MISSING  # hub commit, branch or tag
    val_pairs_per_cluster: int = MISSING  # without a split column: pairs per cluster dealt to val
    test_pairs_per_cluster: int = MISSING  # ... and to test (the rest is train)
    seed: int = MISSING


@dataclass
class MixtureSchema(BenchmarkSchema):
    benchmarks: list[str] = MISSING  # the members (conf/bias_benchmark/ names)
    modality: str = MISSING  # reaches the members with images
    path: str | None = MISSING  # reaches the members with a path (SynthBias's CSV)
    seed: int | None = MISSING  # null below: each member's own value
    n_train: int | None = MISSING
    n_train_unambiguous: int | None = MISSING
    val_pairs_per_occupation: int | None = MISSING
    test_pairs_per_occupation: int | None = MISSING


# --- steering_method --------------------------------------------------------------------------------


@dataclass
class MethodSchema:
    _target_: str = MISSING  # the SteeringMethod class (inside dso_cli, or in allow_targets)
    name: str = MISSING  # the method (dso, caa, iti, mean_match, leace, prompting, none)


@dataclass
class DSOSchema(MethodSchema):
    stock_export: bool = MISSING  # keep b = 0 on the norms whose shift a stock checkpoint cannot hold


@dataclass
class CAASchema(MethodSchema):
    layers: list[int] | None = MISSING  # decoder layers (negative: from the end); null: chosen on val
    candidate_layers: list[int] | None = MISSING  # null: five evenly spaced interior layers
    select_alpha: float = MISSING  # strength at which candidate layers are compared


@dataclass
class ITISchema(MethodSchema):
    top_k: int = MISSING  # heads steered
    seed: int = MISSING  # of the probes' cross-validation


@dataclass
class LeaceSchema(MethodSchema):
    layers: list[int] | None = MISSING  # null: the middle layer


@dataclass
class PromptingSchema(MethodSchema):
    instruction: str | None = MISSING  # null: the built-in instruction


# --- reward, logger, capability -----------------------------------------------------------------------


@dataclass
class RewardSchema:
    _target_: str = MISSING  # the reward callable
    unknown_reward: float = MISSING  # reward of an "unknown" option


@dataclass
class DecisionBalanceSchema(RewardSchema):
    item_divergence: str = MISSING  # kl (KL(uniform || pi) of the two people) | gap (|P(pro) - P(anti)|)
    order_weight: float = MISSING  # weight of the counterbalanced pairs' order gap
    pair_weight: float = MISSING  # weight of the counterbalanced pairs' gender gap
    position_weight: float = MISSING  # weight of the batch's mean lean to the first-listed person
    occupation_weight: float = MISSING  # weight of the paper's per-occupation gap


@dataclass
class LoggerSchema:
    name: str = MISSING  # csv | wandb | none


@dataclass
class WandbLoggerSchema(LoggerSchema):
    project: str = MISSING
    mode: str = MISSING  # offline | online | disabled


@dataclass
class MmluSchema(BenchmarkSchema):
    path: str = MISSING  # hub id or local dataset
    subset: str | None = MISSING
    split: str = MISSING
    data_files: Any = MISSING  # a path, a list of paths, or null (the hub)
    max_items: int | None = MISSING  # a seeded random subset (null: all)
    seed: int = MISSING


@dataclass
class MmluDevSchema(BenchmarkSchema):
    max_per_subject: int | None = MISSING


@dataclass
class MmmuSchema(BenchmarkSchema):
    path: str = MISSING
    subjects: list[str] | None = MISSING  # null: all 30
    split: str = MISSING
    data_files: Any = MISSING
    max_items: int | None = MISSING


@dataclass
class NeutralTextSchema(BenchmarkSchema):
    path: str | None = MISSING  # one passage per line (null: the held-out Lee articles)
    max_passages: int | None = MISSING
    max_tokens: int = MISSING


GROUP_SCHEMAS: dict[str, dict[str, type]] = {
    "bias_benchmark": {
        "occupation": OccupationSchema,
        "synthbias": SynthBiasSchema,
        "bbq": BBQSchema,
        "winobias": WinoBiasSchema,
        "decisions": DecisionsSchema,
        "mixture": MixtureSchema,
    },
    "steering_method": {
        "dso": DSOSchema,
        "caa": CAASchema,
        "iti": ITISchema,
        "mean_match": MethodSchema,
        "leace": LeaceSchema,
        "prompting": PromptingSchema,
        "none": MethodSchema,
    },
    "reward": {
        "stereotype_flip": RewardSchema,
        "abs_gap": RewardSchema,
        "decision_balance": DecisionBalanceSchema,
    },
    "logger": {"csv": LoggerSchema, "none": LoggerSchema, "wandb": WandbLoggerSchema},
    "capability": {
        "mmlu": MmluSchema,
        "mmlu_dev": MmluDevSchema,
        "mmmu": MmmuSchema,
        "neutral_text": NeutralTextSchema,
    },
}
"""``group -> option -> schema``: stored as ``schema/<group>/<option>`` in Hydra's ConfigStore."""


def schema_for(group: str, option: str) -> type | None:
    return GROUP_SCHEMAS.get(group, {}).get(option)
