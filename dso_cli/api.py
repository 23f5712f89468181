"""The library API: fit, apply and evaluate any steering method on a model already in memory.

    import dso_cli
    ds = dso_cli.load_benchmark("occupation")
    artifact = dso_cli.fit("caa", model, tokenizer, ds["train"])
    with artifact.apply(model, 0.5):
        ...
    rows = dso_cli.evaluate(artifact, model, tokenizer, ds["test"], [0.0, 0.5, 1.0])

The same code paths as the verbs, with the shipped configs' defaults: a method's options are its
``conf/steering_method/<name>.yaml`` keys, a trained method's (DSO's) also the optimizer's keys
(``steps=``, ``lr=``, ...).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import datasets
from torch import nn

from dso_cli.errors import DsoError
from dso_cli.evaluation.metric import Metric
from dso_cli.scoring.options import ScoringOptions
from dso_cli.steering.artifact import Artifact
from dso_cli.steering.method import FitJob, SteeringMethod, Training, method_class, option_names


def load_benchmark(name: str, **options: Any) -> datasets.DatasetDict:
    """The splits of ``conf/bias_benchmark/<name>.yaml`` with ``options`` on top (a text benchmark;
    ``modality="image"`` with ``image_dir=`` for a vision-language one)."""
    from omegaconf import OmegaConf

    from dso_cli.benchmarks import build_benchmark
    from dso_cli.config.files import group_config, typed

    base = group_config("bias_benchmark", name)
    unknown = sorted(set(options) - set(base))
    if unknown:
        raise DsoError(f"{unknown[0]} is not an option of the {name} benchmark (its options: {', '.join(base)})")
    cfg = typed("bias_benchmark", name, OmegaConf.merge(base, options), prefix=name)
    if cfg.get("modality") == "auto":
        cfg.modality = "text"
    return build_benchmark(cfg)


def fit(
    method: str | SteeringMethod,
    model: nn.Module,
    tokenizer: Any,
    items: Iterable[Mapping[str, Any]],
    *,
    val_items: Iterable[Mapping[str, Any]] | None = None,
    processor: Any = None,
    scoring: ScoringOptions | None = None,
    **options: Any,
) -> Artifact:
    """Fit ``method`` (a name or a :class:`SteeringMethod`) on ``items`` (a benchmark's train split).

    ``options`` are the method's own (``layers=[10]`` for CAA), and for a trained method also the RL
    trainer's (``steps=``, ``lr=``, ``reward=`` a reward callable, ``checkpoint_path=``). ``scoring``:
    how prompts are rendered and scored (default: the shipped ``scoring`` section's values)."""
    from dso_cli.models.loading import LoadedModel

    train = _as_items(items)
    val = _as_items(val_items) if val_items is not None else None
    if isinstance(method, str):
        cls = method_class(method)
        own = {k: v for k, v in options.items() if k in option_names(cls)}
        fitter = cls(**own)
        rest = {k: v for k, v in options.items() if k not in own}
    else:
        fitter, rest = method, dict(options)
    loaded = LoadedModel.wrap(model, tokenizer, processor)
    job = FitJob(loaded, _scorer(model, tokenizer, processor, scoring), train, val)
    if fitter.trained:
        job.training = _training(rest)
    elif rest:
        raise DsoError(f"{sorted(rest)[0]} is not an option of {fitter.name}")
    was_training = model.training
    model.eval()
    try:
        return fitter.fit(job)
    finally:
        model.train(was_training)


def load_artifact(path: str | Path) -> Artifact:
    """An artifact saved by ``dso train`` or :meth:`Artifact.save` (checked against its sha256)."""
    return Artifact.load(path)


def evaluate(
    artifact: Artifact | None,
    model: nn.Module,
    tokenizer: Any,
    items: Iterable[Mapping[str, Any]],
    strengths: Sequence[float],
    *,
    processor: Any = None,
    scoring: ScoringOptions | None = None,
    bootstrap_reps: int = 1000,
    seed: int = 0,
    metrics: Sequence[Metric] = (),
) -> list[dict[str, Any]]:
    """One metrics dict per strength (the ``sweep.csv`` decision columns: ``pob``, ``pob_se``,
    ``item_bias``, ``unamb_acc``, ``kl``, ..., then the columns of ``metrics``, your own
    :class:`dso_cli.Metric` objects) of ``model`` steered by ``artifact`` (None: the base model) on
    ``items``."""
    from dso_cli.evaluation import Evaluator, default_metrics

    if artifact is not None:
        artifact.check_fits(model)
    evaluator = Evaluator(
        _scorer(model, tokenizer, processor, scoring),
        default_metrics(text=False, extra=list(metrics)),
        bootstrap_reps=bootstrap_reps,
        seed=seed,
    )
    return evaluator.evaluate(artifact, _as_items(items), [float(s) for s in strengths])


def _as_items(items: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    if isinstance(items, datasets.Dataset):
        return items.to_list()
    return [dict(item) for item in items]


def _scorer(model: nn.Module, tokenizer: Any, processor: Any, scoring: ScoringOptions | None):
    from dso_cli.scoring import OptionScorer

    return OptionScorer(model, tokenizer, scoring, processor=processor)


def _training(options: Mapping[str, Any]) -> Training:
    """The RL trainer's settings (:class:`~dso_cli.rl.config.TrainConfig`'s defaults, the CLI's) and the
    CLI's default reward (``conf/base.yaml``), ``options`` on top."""
    from dso_cli.benchmarks.neutral_text import read_passages
    from dso_cli.config.files import default_option, group_config
    from dso_cli.pipeline.fitting import trainer_settings
    from dso_cli.rl.config import TrainConfig
    from dso_cli.targets import instantiate_checked

    extra = dict(options)
    reward = extra.pop("reward", None)
    if reward is None:
        reward = instantiate_checked(group_config("reward", default_option("reward")), "reward")
    checkpoint = extra.pop("checkpoint_path", None)
    config = trainer_settings(extra, seed=TrainConfig.seed)  # a seed= option wins
    text_path = config.kl_text_path
    return Training(
        config=config,
        reward=reward,
        text_passages=read_passages(text_path, "train", what="kl_text_path") if config.kl_text_passages > 0 else (),
        val_text_passages=read_passages(text_path, "val", what="kl_text_path") if config.eval_every > 0 else (),
        checkpoint_path=Path(checkpoint) if checkpoint else None,
    )
