"""Typed schemas of every verb's config, registered in Hydra's ConfigStore.

Each ``conf/<verb>.yaml`` starts its defaults list with ``<verb>_schema``: the dataclass below is
merged first, so the YAML files (and every ``key=value`` of the command line) are merged into typed,
closed nodes. A wrong type (``seed=abc``, ``sweep.bootstrap_reps=1.5``, ``model.trust_remote_code=maybe``)
or an unknown key (``optimizer.stepz=3``) then fails at composition, naming the key, in single runs and
in every job of a multirun alike. The values themselves live in the YAML files (with their comments);
the schemas hold the types (and a comment per key). Groups whose keys differ by option (the benchmark, the steering
method, the reward, the logger, the capability set) have one schema per option (:mod:`dso_cli.config.group_schemas`).
Range checks (``seed >= 0``, ``lr > 0``) are in :mod:`dso_cli.cli` and :class:`dso_cli.rl.config.TrainConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING


@dataclass
class ModelSchema:
    name: str = MISSING  # short name used in run directory names
    name_or_path: str = MISSING  # hub id, local directory or packaged://<package>/<file.gguf>
    revision: str | None = None  # hub revision (commit, branch or tag)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    device_map: Any = None  # auto shards a large model over the GPUs of one node
    trust_remote_code: bool = False  # run the model repository's own code (only when typed on the command line)
    multimodal: bool | None = None  # null: decided from the model's config
    norm_modules: Any = None  # null: the family's layout; a list of module names or one regex
    chat_template_kwargs: dict[str, Any] = field(default_factory=dict)  # chat template arguments


@dataclass
class OptimizerSchema:
    name: str = MISSING  # optimizer name (adam)
    lr: float = MISSING  # learning rate
    betas: list[float] = MISSING  # Adam betas, two numbers in [0, 1)
    steps: int = MISSING  # optimizer steps
    occupations_per_batch: int = MISSING  # clusters (occupations) per batch
    pairs_per_occupation: int = MISSING  # counterbalanced pairs per cluster and batch
    unambiguous_per_batch: int = MISSING  # unambiguous items per step
    accumulate: int = MISSING  # micro-batches per optimizer step
    grad_clip: float = MISSING  # gradient norm clip
    estimator: str = MISSING  # exact | reinforce | rloo | ppo
    samples: int = MISSING  # rloo / ppo: sampled options per item
    ppo_epochs: int = MISSING  # ppo: updates per batch
    ppo_clip: float = MISSING  # ppo: clipping range
    kl_mode: str = MISSING  # penalty | constraint
    kl_coef: float = MISSING  # two-option KL weight on unambiguous items (0: off)
    kl_budget: float = MISSING  # constraint: KL budget per source
    kl_dual_lr: float = MISSING  # constraint: dual ascent step
    kl_text_passages: int = MISSING  # neutral training passages per step in the full-vocabulary KL
    kl_text_tokens: int = MISSING  # tokens per training passage
    kl_text_path: str | None = MISSING  # training text, one passage per line (null: the Lee background articles)
    kl_text_coef: float | None = MISSING  # text KL weight (null: kl_coef)
    kl_prompt_items: int = MISSING  # training prompts per step in the text KL
    accuracy_weight: float = MISSING  # reward weight of the unambiguous items' correct option
    l1: float = MISSING  # L1 sparsity on a and b
    strength_mode: str = MISSING  # fixed: train at strength 1 only (the paper) | path: also along (0, 1)
    path_weight: float = MISSING  # weight of the monotone-path term
    eval_every: int = MISSING  # early stopping: val POB every N steps (0: off)
    patience: int = MISSING  # evaluations without improvement before stopping
    val_kl_budget: bool = MISSING  # early stopping keeps steps whose val-text KL is within kl_budget
    checkpoint_every: int = MISSING  # steps between checkpoints
    autocast: bool = MISSING  # bf16 autocast of forward passes on CUDA


@dataclass
class ScoringSchema:
    prefix_tree: bool = MISSING  # pack text items into prefix trees
    # int or "auto": typed Any, as OmegaConf 2.3 cannot merge a Union value into a missing node
    tree_tokens: Any = MISSING  # tokens per packed tree, or auto
    tree_attention_chunk: Any = MISSING  # query chunk of tree attention, auto, or 0 (dense)
    batch_size: int = MISSING  # items per forward pass where trees do not apply
    chat_template: bool = MISSING  # wrap prompts in the tokenizer's chat template
    system_prompt: str | None = MISSING  # null: the chat template's own default
    length_normalize: bool = MISSING  # mean instead of sum of option token log-probs
    share_prompt: bool = MISSING  # without trees: options continue from the prompt's KV cache
    cpu_linear: str = MISSING  # auto | onednn | stock


@dataclass
class HeldoutTextSchema:
    path: str | None = MISSING  # one passage per line; null: the 50 held-out Lee articles
    max_passages: int | None = MISSING  # passages used (null: all)
    max_tokens: int = MISSING  # tokens per passage
    prompt_items: int = MISSING  # prompts of the evaluated split for prompt_kl (0: off)
    batch_size: int = MISSING  # passages per forward pass


@dataclass
class ExtractSchema:
    cache: str | None = MISSING  # a dso extract run_dir whose cached activations fits read
    dtype: str = MISSING  # float32 | float16 | bfloat16
    shard_items: int = MISSING  # items per safetensors shard
    split: str = "train"  # dso extract: the benchmark split
    modules: list[str] = field(default_factory=lambda: ["norms", "residual", "heads"])  # dso extract: what to record
    positions: str = "answer"  # dso extract: answer | last_prompt | all


@dataclass
class BaseSchema:
    verb: str = MISSING  # the verb this config is for
    model: ModelSchema = MISSING
    # option-dependent groups: typed by their option's schema (dso_cli/group_schemas.py)
    bias_benchmark: Any = MISSING
    steering_method: Any = MISSING
    optimizer: OptimizerSchema = MISSING
    reward: Any = MISSING
    logger: Any = MISSING
    run_dir: str | None = None  # the run directory
    outputs_root: str = MISSING  # where new run directories go
    seed: int = MISSING  # random seed (whole number >= 0)
    allow_targets: list[str] = MISSING  # module prefixes whose _target_s are trusted besides dso_cli
    scoring: ScoringSchema = MISSING
    heldout_text: HeldoutTextSchema = MISSING
    extract: ExtractSchema = MISSING


@dataclass
class TrainSection:
    eval_val: bool = MISSING  # also evaluate val at strength 0 and 1 after fitting


@dataclass
class TrainSchema(BaseSchema):
    resume: Any = MISSING  # true | false | auto: continue run_dir's interrupted training
    overwrite: bool = MISSING  # start over in a run_dir that holds an earlier run
    train: TrainSection = MISSING


@dataclass
class SweepSection:
    splits: list[str] = MISSING  # splits to evaluate
    bootstrap_reps: int = MISSING  # pair-bootstrap resamples for pob_se
    extra_metrics: list[str] = MISSING  # dotted paths of dso_cli.Metric classes (trusted via allow_targets)


@dataclass
class SweepSchema(BaseSchema):
    alpha: Any = MISSING  # strengths: start:stop:step, a number or a list
    sweep: SweepSection = MISSING


@dataclass
class EvalSection:
    benchmarks: list[str] | None = MISSING  # bias benchmarks (null: the run's own and the offline ones)
    capability: list[str] | None = MISSING  # capability sets
    split: str = MISSING  # the benchmarks' split
    steer: bool = MISSING  # false: the base model only
    bootstrap_reps: int = MISSING  # pair-bootstrap resamples
    text_batch_size: int = MISSING  # passages per forward pass
    lm_eval_tasks: list[str] | None = MISSING  # lm-evaluation-harness tasks run at every strength
    lm_eval_include_path: str | None = MISSING  # a folder of local lm-eval task YAMLs
    lm_eval_limit: int | None = MISSING  # documents per task (null: all)
    lm_eval_batch_size: int = MISSING  # lm-eval's batch size
    extra_metrics: list[str] = MISSING  # dotted paths of dso_cli.Metric classes (trusted via allow_targets)


@dataclass
class EvalSchema(BaseSchema):
    alpha: Any = MISSING  # strengths
    eval: EvalSection = MISSING
    capability: dict[str, Any] = field(default_factory=dict)  # capability.<key>= reaches every set with the key


@dataclass
class CompareSection:
    methods: list[str] = MISSING  # steering methods to compare
    grids: dict[str, Any] = MISSING  # strengths per method (null: the method's default grid)
    splits: list[str] = MISSING  # splits every method is evaluated on
    select_split: str = MISSING  # where operating points are chosen
    report_split: str = MISSING  # where they are reported
    max_acc_drop: float = MISSING  # largest unambiguous-accuracy cost of an operating point
    bootstrap_reps: int = MISSING  # pair-bootstrap resamples for pob_se
    hypervolume_bootstrap_reps: int = MISSING  # paired resamples for the hypervolumes' SEs
    dso_run: str | None = MISSING  # a dso train run to reuse
    options: dict[str, Any] = MISSING  # per-method options on top of conf/steering_method/<method>.yaml
    extra_metrics: list[str] = MISSING  # dotted paths of dso_cli.Metric classes (trusted via allow_targets)


@dataclass
class CompareSchema(BaseSchema):
    compare: CompareSection = MISSING


@dataclass
class PruneSection:
    splits: list[str] = MISSING  # splits to evaluate
    bootstrap_reps: int = MISSING  # pair-bootstrap resamples
    save_artifacts: bool = MISSING  # save every pruned artifact


@dataclass
class PruneSchema(BaseSchema):
    keep: Any = MISSING  # fractions of neurons to keep
    alpha: Any = MISSING  # the strength to evaluate at (null: the trained one)
    prune: PruneSection = MISSING


@dataclass
class ExportSchema(BaseSchema):
    alpha: Any = MISSING  # the strength to fold in (null: the trained one)
    out: str = MISSING  # directory for the checkpoint
    overwrite: bool = MISSING  # replace an earlier export in out
    tolerance: float = MISSING  # largest max |Δlogits| allowed against the steered model


@dataclass
class AnalyzeSection:
    folds: int = MISSING  # cross-validation folds of the probes
    out_dir: str | None = MISSING  # default: <run_dir>/report


@dataclass
class AnalyzeSchema(BaseSchema):
    analyze: AnalyzeSection = MISSING


@dataclass
class ReportSection:
    out_dir: str | None = MISSING  # default: <first run>/report
    split: str = MISSING  # the split reported


@dataclass
class ReportSchema(BaseSchema):
    runs: list[str] | None = MISSING  # run directories to compare (default: [run_dir])
    report: ReportSection = MISSING


@dataclass
class GenerateSection:
    split: str = MISSING  # the run's benchmark split generated for
    prompts: str | None = MISSING  # a .txt of prompts or a decision file instead of the split
    max_items: int | None = MISSING  # about N items, whole pairs spread over the clusters (null: all)
    max_new_tokens: int = MISSING  # tokens per answer
    do_sample: bool = MISSING  # false: greedy decoding
    temperature: float = MISSING  # sampling temperature
    top_p: float = MISSING  # nucleus sampling mass


@dataclass
class GenerateSchema(BaseSchema):
    alpha: Any = MISSING  # strengths
    generate: GenerateSection = MISSING


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
