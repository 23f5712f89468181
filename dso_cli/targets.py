"""Which ``_target_``s a config may instantiate: callables inside ``dso_cli``, and prefixes the user trusts.

A run directory's ``config.yaml`` is data from whoever made the run. Instantiating any ``_target_`` it
names (``torch.load`` of a pickle, say) would run their code on this machine, so every config is
checked before Hydra instantiates it: targets outside ``dso_cli`` are refused unless their module
prefix was passed on this command line (``allow_targets=[mypkg]``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from dso_cli.errors import DsoError

BUILT_IN = ("dso_cli",)
_trusted: tuple[str, ...] = BUILT_IN


def trust(prefixes: Iterable[str]) -> None:
    """Trust ``prefixes`` (module paths, e.g. ``mypkg.benchmarks``) besides ``dso_cli``; from the command line."""
    global _trusted
    extra = tuple(str(p).strip().rstrip(".") for p in prefixes if str(p).strip())
    _trusted = BUILT_IN + extra


def trusted(target: str) -> bool:
    return any(target == prefix or target.startswith(f"{prefix}.") for prefix in _trusted)


def targets(cfg: Any, where: str = "") -> list[tuple[str, str]]:
    """Every ``(key path, _target_)`` in a (nested) config."""
    if isinstance(cfg, (DictConfig, ListConfig)):
        cfg = OmegaConf.to_container(cfg, resolve=False)
    found: list[tuple[str, str]] = []
    if isinstance(cfg, Mapping):
        for key, value in cfg.items():
            path = f"{where}.{key}" if where else str(key)
            if key == "_target_":
                found.append((path, str(value)))
            else:
                found += targets(value, path)
    elif isinstance(cfg, Sequence) and not isinstance(cfg, (str, bytes)):
        for i, value in enumerate(cfg):
            found += targets(value, f"{where}[{i}]")
    return found


def check_targets(cfg: Any, where: str = "", source: str = "") -> None:
    """Refuse (one line) a config that names a ``_target_`` outside the trusted prefixes."""
    for path, target in targets(cfg, where):
        check_trusted(target, path, f" in {source}" if source else "")


def check_trusted(target: str, key: str, origin: str = "") -> None:
    """Refuse (one line) a dotted ``target`` outside the trusted prefixes; ``key`` names where it was given."""
    if not trusted(target):
        top = target.split(".")[0]
        raise DsoError(
            f"{key}={target!r}{origin} is outside dso_cli; refusing to run it "
            f"(pass allow_targets=[{top}] if you trust that code)"
        )


def import_class(path: str, base: type, where: str) -> type:
    """The class at dotted ``path`` (``pkg.module.Class``), a subclass of ``base``; one-line errors that
    name the config key ``where``. Trust is checked by the caller (:func:`check_targets`)."""
    import importlib

    module, _, attr = path.rpartition(".")
    if not module:
        raise DsoError(f"{where}={path}: not a dotted path to a class (pkg.module.Class)")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise DsoError(f"{where}={path}: cannot import it ({exc})") from None
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise DsoError(f"{where}={path} is not a subclass of {base.__module__.split('.')[0]}.{base.__name__}")
    return cls


def instantiate_checked(cfg: Any, where: str = "", **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` after :func:`check_targets`."""
    from hydra.utils import instantiate

    check_targets(cfg, where)
    return instantiate(cfg, **kwargs)
