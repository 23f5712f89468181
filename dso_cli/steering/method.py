"""A steering method is one object: what it records, how it fits, how it applies, what its strength means.

Every method (DSO, the closed-form baselines, a user's own) subclasses :class:`SteeringMethod` in one
file and is selected by ``_target_`` in ``conf/steering_method/<name>.yaml``. Defining the subclass
registers it under its ``name``; :func:`method_class` finds a built-in one through its config file, so
no verb or report compares method names: they ask the method (``trained``, ``knob``, ``placement``).

"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from torch import Tensor, nn

from dso_cli.errors import DsoError

if TYPE_CHECKING:
    from dso_cli.models.loading import LoadedModel
    from dso_cli.rl.config import TrainConfig
    from dso_cli.rl.rewards import Reward
    from dso_cli.scoring import OptionScorer
    from dso_cli.steering.activations import ActivationStore
    from dso_cli.steering.artifact import Artifact


PLACEMENTS = ("affine", "vector", "heads")
"""How a report can draw where an artifact steers (:attr:`SteeringMethod.placement`)."""


@dataclass
class Training:
    """What a trained method (``trained = True``) needs beyond the items: the RL trainer's settings."""

    config: TrainConfig
    reward: Reward
    log: Callable[[dict[str, float]], None] = lambda row: None
    text_passages: Sequence[str] = ()  # neutral text of the full-vocabulary KL
    val_text_passages: Sequence[str] = ()  # held out of training, for early stopping
    checkpoint_path: Path | None = None
    resume: bool = False
    extra_hyperparameters: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class FitJob:
    """Everything a fit may read. Closed-form methods read activations from ``store`` (shared by
    several fits, so the model runs over the training items once); trained ones read ``training``."""

    loaded: LoadedModel
    scorer: OptionScorer
    train_items: Sequence[Mapping[str, Any]]
    val_items: Sequence[Mapping[str, Any]] | None = None
    store: ActivationStore | None = None
    norm_modules: Any = None  # model.norm_modules: null, a regex or a list of module names
    training: Training | None = None

    def activations(self) -> ActivationStore:
        if self.store is None:
            from dso_cli.steering.activations import ActivationStore

            self.store = ActivationStore(self.scorer, self.train_items)
        return self.store


_REGISTRY: dict[str, type[SteeringMethod]] = {}


class SteeringMethod:
    """Base of every steering method; a subclass sets ``name`` and ``strength`` and implements ``fit``
    and ``apply``. Its constructor takes the method's options (its config file's keys)."""

    name: ClassVar[str] = ""
    strength: ClassVar[Mapping[str, Any]] = {"semantics": "", "range": [0.0, 1.0], "default_grid": "0:1:0.25"}
    knob: ClassVar[str] = "α"  # the strength's symbol in plots
    trained: ClassVar[bool] = False  # fitted by the RL trainer: needs FitJob.training (optimizer, reward)
    affine: ClassVar[bool] = False  # tensors are a and b per module: prunable, foldable into an export
    module_free: ClassVar[bool] = False  # tensors are not keyed by model modules (a prompt, say)
    # how `dso report` / `dso analyze` draw where the artifact steers: "affine" (|a|+|b| per layer and norm),
    # "vector" (the layers an additive vector is added at), "heads" (shifted attention heads), None: nothing
    placement: ClassVar[str | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.placement not in (None, *PLACEMENTS):
            raise TypeError(
                f"{cls.__name__}.placement must be None or one of {', '.join(PLACEMENTS)}, not {cls.placement!r}"
            )
        if cls.__dict__.get("name"):
            _REGISTRY[cls.name] = cls

    # the method's options class (dso_cli.config.group_schemas): its keys, defaults, help and checks; a
    # method without one (a user's plugin) gets its config file's keys as a dict
    options_class: ClassVar[type | None] = None

    def __init__(self, **options: Any) -> None:
        if self.options_class is None:  # a method of the user's package: its config file's keys, unchecked
            self.options: Any = dict(options)
            return
        known = option_names(type(self))
        unknown = sorted(set(options) - known)
        if unknown:
            raise DsoError(f"steering_method.{unknown[0]} is not an option of {self.name} (its options: "
                           f"{', '.join(sorted(known)) or 'none'})")  # fmt: skip
        self.options = self.options_class(**options)

    def records(self, model: nn.Module, norm_modules: Any, can_select: bool) -> tuple[list[str], list[str]]:
        """``(outputs, inputs)``: the modules whose answer-position activations ``fit`` reads."""
        return [], []

    def fit(self, job: FitJob) -> Artifact:
        raise NotImplementedError(f"{type(self).__name__}.fit")

    @classmethod
    def apply(cls, model: nn.Module, tensors: Mapping[str, Tensor], strength: float) -> AbstractContextManager:
        """A context manager that steers ``model`` with ``tensors`` at ``strength`` (hooks removed on exit)."""
        raise NotImplementedError(f"{cls.__name__}.apply")

    @classmethod
    def steer(cls, scorer: OptionScorer, tensors: Mapping[str, Tensor], strength: float) -> AbstractContextManager:
        """Steer what ``scorer`` scores: the model by default; a method that changes prompts overrides it."""
        return cls.apply(scorer.model, tensors, strength)

    def create_artifact(
        self,
        job: FitJob,
        tensors: Mapping[str, Tensor],
        hyperparameters: Mapping[str, Any],
        train_metrics: Mapping[str, Any] | None = None,
    ) -> Artifact:
        """The artifact of a fit (a method of a user's package calls this at the end of ``fit``)."""
        from dso_cli.steering.artifact import Artifact  # at call time: artifact.py imports this module

        return Artifact.create(
            self.name,
            tensors,
            model=job.loaded.describe(),
            hyperparameters=hyperparameters,
            strength=self.strength,
            train_metrics=train_metrics,
        )


def method_class(name: str) -> type[SteeringMethod]:
    """The registered method called ``name``; a built-in one is found through its config file."""
    if name not in _REGISTRY and name in _builtin_names():
        _import_target(_config_target(name))
    if name not in _REGISTRY:
        known = ", ".join(sorted(set(_REGISTRY) | set(_builtin_names())))
        raise DsoError(
            f"unknown steering method {name!r} (known: {known}; a method of your own package registers when "
            f"imported: steering_method._target_=pkg.Method allow_targets=[pkg])"
        )
    return _REGISTRY[name]


def option_names(cls: type[SteeringMethod]) -> set[str]:
    """The keys a method takes: its options class's fields (none known for a method without one)."""
    return {f.name for f in fields(cls.options_class)} if cls.options_class is not None else set()


def method_names() -> list[str]:
    """Every method this installation ships (its config files) plus those registered since."""
    return sorted(set(_builtin_names()) | set(_REGISTRY))


def make_method(section: Mapping[str, Any]) -> SteeringMethod:
    """The method a ``steering_method`` config section describes (``_target_`` checked against
    ``allow_targets``; ``name`` and ``_target_`` are not options)."""
    options = {k: v for k, v in dict(section).items() if k not in ("_target_", "name")}
    target = section.get("_target_")
    cls = _checked_class(str(target)) if target else method_class(str(section.get("name")))  # no _target_: older
    return cls(**options)  # the class's name is the method's (a config's name key is a label)


def register_from(section: Mapping[str, Any] | None) -> None:
    """Import a (checked) run config's method class, so the artifacts it made can be applied."""
    if section is not None and section.get("_target_"):
        _checked_class(str(section["_target_"]))


def _checked_class(target: str) -> type[SteeringMethod]:
    """The class ``target`` names, imported only when it is inside dso_cli or in ``allow_targets``."""
    from dso_cli.targets import check_targets

    check_targets({"_target_": target}, "steering_method")
    return _import_target(target)


def _config_target(name: str) -> str:
    from dso_cli.config.files import group_config

    return str(group_config("steering_method", name).get("_target_"))


def _builtin_names() -> list[str]:
    from dso_cli.config.files import group_options

    return group_options("steering_method")


def _import_target(target: str) -> type[SteeringMethod]:
    from dso_cli.targets import import_class

    return import_class(target, SteeringMethod, "steering_method._target_")
