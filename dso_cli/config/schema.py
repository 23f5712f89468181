"""Every verb's settings, one typed class per section, registered in Hydra's ConfigStore as the schema.

Each ``conf/<verb>.yaml`` starts its defaults list with ``<verb>_schema``: the dataclass below is
merged first, so the YAML files (and every ``key=value`` of the command line) are merged into typed,
closed nodes. A wrong type (``seed=abc``, ``sweep.bootstrap_reps=1.5``, ``model.trust_remote_code=maybe``)
or an unknown key (``optimizer.stepz=3``) then fails at composition, naming the key, in single runs and
in every job of a multirun alike. The classes hold each key's default and help text
(:func:`~dso_cli.config.fields.setting`); the YAML files set only what differs. Ranges are checked when
the classes are made (their ``__post_init__``: :class:`~dso_cli.config.fields.Counts`,
:class:`~dso_cli.config.optimizer.OptimizerOptions`), which :func:`dso_cli.config.validation.check_values`
does for every composed config. Groups whose keys differ by option (the benchmark, the steering method,
the reward, the logger, the capability set) have one class per option (:mod:`dso_cli.config.group_schemas`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from omegaconf import MISSING

from dso_cli.config.fields import Counts, setting
from dso_cli.config.optimizer import OptimizerOptions


@dataclass
class ModelSchema:
    name: str = MISSING  # short name used in run directory names
    name_or_path: str = MISSING  # hub id, local directory or packaged://<package>/<file.gguf>
    revision: str | None = setting(None, "hub revision (commit, branch or tag)")
    device: str = setting("auto", "auto | cpu | cuda | cuda:N")
    dtype: str = setting("auto", "auto | float32 | bfloat16 | float16")
    device_map: Any = setting(None, "auto shards a large model over the GPUs of one node")
    trust_remote_code: bool = setting(
        False, "run the model repository's own code (only when typed on the command line)"
    )
    multimodal: bool | None = setting(None, "null: decided from the model's config")
    norm_modules: Any = setting(None, "null: the family's layout; a list of module names or one regex")
    chat_template_kwargs: dict[str, Any] = setting({}, "chat template arguments")


@dataclass
class ScoringSchema(Counts):
    section: ClassVar[str] = "scoring"

    prefix_tree: bool = setting(True, "pack text items into prefix trees")
    # int or "auto": typed Any, as OmegaConf 2.3 cannot merge a Union value into a missing node
    tree_tokens: Any = setting("auto", "tokens per packed tree, or auto")
    tree_attention_chunk: Any = setting("auto", "query chunk of tree attention, auto, or 0 (dense)")
    batch_size: int = setting(16, "items per forward pass where trees do not apply")
    chat_template: bool = setting(True, "wrap prompts in the tokenizer's chat template")
    system_prompt: str | None = setting(None, "null: the chat template's own default")
    length_normalize: bool = setting(False, "mean instead of sum of option token log-probs")
    share_prompt: bool = setting(True, "without trees: options continue from the prompt's KV cache")
    cpu_linear: str = setting("auto", "auto | onednn | stock")


@dataclass
class HeldoutTextSchema(Counts):
    section: ClassVar[str] = "heldout_text"

    path: str | None = setting(None, "one passage per line; null: the 50 held-out Lee articles")
    max_passages: int | None = setting(24, "passages used (null: all)")
    max_tokens: int = setting(128, "tokens per passage")
    prompt_items: int = setting(12, "prompts of the evaluated split for prompt_kl (0: off)")
    batch_size: int = setting(8, "passages per forward pass")


@dataclass
class ExtractSchema(Counts):
    section: ClassVar[str] = "extract"

    cache: str | None = setting(None, "a dso extract run_dir whose cached activations fits read")
    dtype: str = setting("float32", "float32 | float16 | bfloat16")
    shard_items: int = setting(128, "items per safetensors shard")
    split: str = setting("train", "dso extract: the benchmark split")
    modules: list[str] = setting(["norms", "residual", "heads"], "dso extract: what to record")
    positions: str = setting("answer", "dso extract: answer | last_prompt | all")


@dataclass
class BaseSchema(Counts):
    section: ClassVar[str] = ""

    verb: str = MISSING  # the verb this config is for
    model: ModelSchema = MISSING
    # option-dependent groups: typed by their option's schema (dso_cli/group_schemas.py)
    bias_benchmark: Any = MISSING
    steering_method: Any = MISSING
    optimizer: OptimizerOptions = field(default_factory=OptimizerOptions)
    reward: Any = MISSING
    logger: Any = MISSING
    run_dir: str | None = setting(None, "the run directory")
    outputs_root: str = setting("outputs", "where new run directories go")
    seed: int = setting(0, "random seed (whole number >= 0)")
    allow_targets: list[str] = setting([], "module prefixes whose _target_s are trusted besides dso_cli")
    scoring: ScoringSchema = field(default_factory=ScoringSchema)
    heldout_text: HeldoutTextSchema = field(default_factory=HeldoutTextSchema)
    extract: ExtractSchema = field(default_factory=ExtractSchema)


@dataclass
class TrainSection:
    eval_val: bool = setting(False, "also evaluate val at strength 0 and 1 after fitting")


@dataclass
class TrainSchema(BaseSchema):
    resume: Any = setting(False, "true | false | auto: continue run_dir's interrupted training")
    overwrite: bool = setting(False, "start over in a run_dir that holds an earlier run")
    train: TrainSection = field(default_factory=TrainSection)


@dataclass
class SweepSection(Counts):
    section: ClassVar[str] = "sweep"

    splits: list[str] = setting(["test"], "splits to evaluate")
    bootstrap_reps: int = setting(1000, "pair-bootstrap resamples for pob_se")
    extra_metrics: list[str] = setting([], "dotted paths of dso_cli.Metric classes (trusted via allow_targets)")


@dataclass
class SweepSchema(BaseSchema):
    alpha: Any = setting("0:1:0.25", "strengths: start:stop:step, a number or a list")
    sweep: SweepSection = field(default_factory=SweepSection)


@dataclass
class EvalSection(Counts):
    section: ClassVar[str] = "eval"

    benchmarks: list[str] | None = setting(None, "bias benchmarks (null: the run's own and the offline ones)")
    capability: list[str] | None = setting(["mmlu_dev", "neutral_text"], "capability sets")
    split: str = setting("test", "the benchmarks' split")
    steer: bool = setting(True, "false: the base model only")
    bootstrap_reps: int = setting(1000, "pair-bootstrap resamples")
    text_batch_size: int = setting(8, "passages per forward pass")
    lm_eval_tasks: list[str] | None = setting(None, "lm-evaluation-harness tasks run at every strength")
    lm_eval_include_path: str | None = setting(None, "a folder of local lm-eval task YAMLs")
    lm_eval_limit: int | None = setting(None, "documents per task (null: all)")
    lm_eval_batch_size: int = setting(8, "lm-eval's batch size")
    extra_metrics: list[str] = setting([], "dotted paths of dso_cli.Metric classes (trusted via allow_targets)")


@dataclass
class EvalSchema(BaseSchema):
    alpha: Any = setting([0, 0.5, 1], "strengths")
    eval: EvalSection = field(default_factory=EvalSection)
    capability: dict[str, Any] = setting({}, "capability.<key>= reaches every set with the key")


@dataclass
class CompareSection(Counts):
    section: ClassVar[str] = "compare"

    methods: list[str] = setting(
        ["none", "prompting", "caa", "iti", "mean_match", "leace", "projection", "leace_association", "dso"],
        "steering methods to compare",
    )
    grids: dict[str, Any] = setting(
        {
            "none": "[0]",
            "prompting": "[0,1]",
            "caa": "[0,1,2,4]",
            "iti": "[0,5,10,15]",
            "mean_match": "[0,0.25,0.5,1]",
            "leace": "[0,0.5,1]",
            "projection": "[0,0.5,1]",
            "leace_association": "[0,0.5,1]",
            "dso": "[0,0.25,0.5,1]",
        },
        "strengths per method (null: the method's default grid)",
    )
    splits: list[str] = setting(["val", "test"], "splits every method is evaluated on")
    select_split: str = setting("val", "where operating points are chosen")
    report_split: str = setting("test", "where they are reported")
    max_acc_drop: float = setting(0.05, "largest unambiguous-accuracy cost of an operating point")
    bootstrap_reps: int = setting(1000, "pair-bootstrap resamples for pob_se")
    hypervolume_bootstrap_reps: int = setting(500, "paired resamples for the hypervolumes' SEs")
    dso_run: str | None = setting(None, "a dso train run to reuse")
    runs: dict[str, str] = setting(
        {},
        "more trained runs, each a curve of its own: label -> run directory (e.g. {dso_paper: DIR}); "
        "evaluated over compare.grids.<label>, else its method's grid",
    )
    options: dict[str, Any] = setting({}, "per-method options on top of conf/steering_method/<method>.yaml")
    extra_metrics: list[str] = setting([], "dotted paths of dso_cli.Metric classes (trusted via allow_targets)")


@dataclass
class CompareSchema(BaseSchema):
    compare: CompareSection = field(default_factory=CompareSection)


@dataclass
class PruneSection(Counts):
    section: ClassVar[str] = "prune"

    splits: list[str] = setting(["test"], "splits to evaluate")
    bootstrap_reps: int = setting(1000, "pair-bootstrap resamples")
    save_artifacts: bool = setting(True, "save every pruned artifact")


@dataclass
class PruneSchema(BaseSchema):
    keep: Any = setting("0.1:1:0.1", "fractions of neurons to keep")
    alpha: Any = setting(None, "the strength to evaluate at (null: the trained one)")
    prune: PruneSection = field(default_factory=PruneSection)


@dataclass
class ExportSchema(BaseSchema):
    alpha: Any = setting(None, "the strength to fold in (null: the trained one)")
    out: str = setting(MISSING, "directory for the checkpoint")
    overwrite: bool = setting(False, "replace an earlier export in out")
    tolerance: float = setting(0.0001, "largest max |Δlogits| allowed against the steered model")


@dataclass
class AnalyzeSection(Counts):
    section: ClassVar[str] = "analyze"

    folds: int = setting(5, "cross-validation folds of the probes")
    out_dir: str | None = setting(None, "default: <run_dir>/report")


@dataclass
class AnalyzeSchema(BaseSchema):
    analyze: AnalyzeSection = field(default_factory=AnalyzeSection)


@dataclass
class ReportSection:
    out_dir: str | None = setting(None, "default: <first run>/report")
    split: str = setting("test", "the split reported")


@dataclass
class ReportSchema(BaseSchema):
    runs: list[str] | None = setting(None, "run directories to compare (default: [run_dir])")
    report: ReportSection = field(default_factory=ReportSection)


@dataclass
class GenerateSection(Counts):
    section: ClassVar[str] = "generate"

    split: str = setting("test", "the run's benchmark split generated for")
    prompts: str | None = setting(None, "a .txt of prompts or a decision file instead of the split")
    max_items: int | None = setting(16, "about N items, whole pairs spread over the clusters (null: all)")
    max_new_tokens: int = setting(48, "tokens per answer")
    do_sample: bool = setting(False, "false: greedy decoding")
    temperature: float = setting(1.0, "sampling temperature")
    top_p: float = setting(1.0, "nucleus sampling mass")


@dataclass
class GenerateSchema(BaseSchema):
    alpha: Any = setting([0, 1], "strengths")
    generate: GenerateSection = field(default_factory=GenerateSection)


@dataclass
class ExtractVerbSchema(BaseSchema):
    pass


SCHEMAS: dict[str, type] = {
    "train": TrainSchema,
    "sweep": SweepSchema,
    "report": ReportSchema,
    "eval": EvalSchema,
    "compare": CompareSchema,
    "prune": PruneSchema,
    "export": ExportSchema,
    "extract": ExtractVerbSchema,
    "analyze": AnalyzeSchema,
    "generate": GenerateSchema,
}


_registered = False


def register_schemas() -> None:
    """Store ``<verb>_schema`` for every verb in Hydra's ConfigStore (once per process)."""
    global _registered
    if _registered:
        return
    from hydra.core.config_store import ConfigStore

    from dso_cli.config.group_schemas import GROUP_SCHEMAS

    store = ConfigStore.instance()
    for verb, schema in SCHEMAS.items():
        store.store(name=f"{verb}_schema", node=schema)
    for group, options in GROUP_SCHEMAS.items():
        for option, schema in options.items():
            store.store(group=f"schema/{group}", name=option, node=schema)
    _registered = True
