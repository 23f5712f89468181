"""The typed inputs of the pipeline layer, each read from a verb's config in one ``from_config``.

This module is the boundary: a verb holds the whole resolved config and turns the parts a step needs
into one of these values; the pipeline functions below it (loading a model, locating a run, reading
held-out text, opening an activation cache) receive only these, so following an argument never
climbs back up to the config.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from dso_cli.scoring.options import ScoringOptions


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, (DictConfig, ListConfig)) else node


@dataclass(frozen=True)
class ModelSetup:
    """How to load and score a model: :func:`~dso_cli.models.loading.load_model`'s keywords, the
    scorer's options, and the seed set just before the weights load (a randomly initialised test
    model, and every later draw, depend on it)."""

    model: Mapping[str, Any]
    scoring: ScoringOptions = field(default_factory=ScoringOptions)
    seed: int = 0

    @classmethod
    def from_config(cls, cfg: DictConfig) -> ModelSetup:
        model = _plain(cfg.model)
        scoring = dict(_plain(cfg.scoring))
        scoring["chat_template_kwargs"] = dict(model.get("chat_template_kwargs") or {})
        return cls(model=model, scoring=ScoringOptions.from_mapping(scoring), seed=int(cfg.seed))

    @property
    def norm_modules(self) -> str | list[str] | None:
        """``model.norm_modules``: None (the family's layout), one regex, or a list of module names."""
        value = self.model.get("norm_modules")
        return list(value) if isinstance(value, (list, tuple)) else value


@dataclass(frozen=True)
class RunLocation:
    """Where a verb finds the trained run it reads: ``run_dir``, else the newest ``dso train`` run of
    the model and benchmark under ``outputs_root``."""

    run_dir: Path | None
    outputs_root: Path
    model: str  # the model's hub id or path, as the run recorded it
    benchmark: str

    @classmethod
    def from_config(cls, cfg: DictConfig) -> RunLocation:
        return cls(
            run_dir=Path(cfg.run_dir) if cfg.get("run_dir") else None,
            outputs_root=Path(cfg.outputs_root),
            model=str(cfg.model.name_or_path),
            benchmark=str(cfg.bias_benchmark.name),
        )


@dataclass(frozen=True)
class HeldoutText:
    """The neutral text the capability cost is measured on (``heldout_text``), and the passages the run
    trained its text KL on, which it must not share (empty when the run used none)."""

    path: str | None = None  # one passage per line; None: the held-out Lee articles
    max_passages: int | None = 24
    max_tokens: int = 128
    prompt_items: int = 12  # prompts of the evaluated split for prompt_kl (0: off)
    batch_size: int = 8
    trained_on: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, cfg: DictConfig) -> HeldoutText:
        from dso_cli.pipeline.fitting import kl_text

        text = cfg.heldout_text
        trained: tuple[str, ...] = ()
        if int(OmegaConf.select(cfg, "optimizer.kl_text_passages", default=0) or 0) > 0:
            trained = tuple(kl_text(cfg))
        return cls(
            path=text.path,
            max_passages=text.max_passages,
            max_tokens=int(text.max_tokens),
            prompt_items=int(text.prompt_items),
            batch_size=int(text.batch_size),
            trained_on=trained,
        )


@dataclass(frozen=True)
class CacheSettings:
    """The activation cache closed-form fits read (``extract.cache``, a ``dso extract`` run directory;
    None: no cache) and how it stores new entries."""

    root: str | None = None
    dtype: str = "float32"
    shard_items: int = 128

    @classmethod
    def from_config(cls, cfg: DictConfig) -> CacheSettings:
        extract = cfg.get("extract") or {}
        return cls(
            root=extract.get("cache"),
            dtype=str(extract.get("dtype", "float32")),
            shard_items=int(extract.get("shard_items", 128)),
        )
