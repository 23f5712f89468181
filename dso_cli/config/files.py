"""Where the Hydra configs live and how one group option is read (for the CLI, `dso eval`, mixtures)."""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from dso_cli.errors import DsoError, first_line

WHAT = {"bias_benchmark": "bias benchmark", "capability": "capability set"}


def conf_dir() -> Path:
    """The Hydra config directory, ``dso_cli/conf`` (inside the package, so a plain ``pip install .``
    has it too; ``conf/`` at the checkout's root links to it).

    Its configs start from the typed schemas of :mod:`dso_cli.config.schema` and
    :mod:`dso_cli.config.group_schemas`, registered here so that whoever composes them (the CLI, a test, a
    script) finds them."""
    from dso_cli.config.schema import register_schemas

    register_schemas()
    return Path(str(resources.files("dso_cli") / "conf"))


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (conf_dir() / group).glob("*.yaml"))


def check_option(group: str, name: str, *, where: str = "") -> None:
    """A one-line error listing the choices when ``conf/<group>/`` has no option ``name``."""
    options = group_options(group)
    if name not in options:
        what = WHAT.get(group, group)
        raise DsoError(f"unknown {what} {name!r}{f' in {where}' if where else ''} (choose from: {', '.join(options)})")


def default_option(group: str) -> str:
    """The option ``conf/base.yaml`` picks for ``group``: the Python API trains with the CLI's defaults."""
    base = OmegaConf.load(conf_dir() / "base.yaml")
    for entry in base.get("defaults", []):
        if isinstance(entry, DictConfig) and group in entry:
            return str(entry[group])
    raise DsoError(f"conf/base.yaml picks no default {WHAT.get(group, group)}")


def group_config(group: str, name: str, *, where: str = "") -> DictConfig:
    """``conf/<group>/<name>.yaml``; an unknown name is a one-line error listing the choices."""
    check_option(group, name, where=where)
    cfg = OmegaConf.load(conf_dir() / group / f"{name}.yaml")
    assert isinstance(cfg, DictConfig)
    cfg.pop("defaults", None)  # the option's schema (Hydra's defaults list), applied here instead
    return typed(group, name, cfg)


def schema_error(exc: BaseException) -> tuple[str, str] | None:
    """``(key, what was wrong)`` from the OmegaConf validation error behind ``exc`` (its cause chain)."""
    cause: BaseException | None = exc
    while cause is not None:
        key = getattr(cause, "full_key", None)
        if key:
            msg = str(getattr(cause, "msg", "") or cause).strip().splitlines()[0]
            return key, msg.replace("Invalid value assigned: ", "")
        cause = cause.__cause__ or cause.__context__
    return None


def typed(group: str, name: str, cfg: DictConfig, *, prefix: str = "") -> DictConfig:
    """``cfg`` checked against the option's schema (types, closed keys), as a plain closed DictConfig.

    Options without a schema (a user's own) come back unchanged. ``prefix`` names the keys in the
    one-line error as the user typed them (``bias.n_train: ...``)."""
    from omegaconf.errors import OmegaConfBaseException

    from dso_cli.config.group_schemas import schema_for

    schema = schema_for(group, name)
    if schema is None:
        return cfg
    try:
        checked = OmegaConf.merge(OmegaConf.structured(schema), cfg)
    except OmegaConfBaseException as exc:
        key, message = schema_error(exc) or ("", first_line(exc))
        where = prefix or group
        raise DsoError(f"{where}.{key}: {message}" if key else f"{where} {name}: {message}") from None
    out = OmegaConf.create(OmegaConf.to_container(checked, resolve=False))
    OmegaConf.set_struct(out, True)
    return out


@functools.cache
def options_for_target(group: str, target: str) -> type | None:
    """The options class of the shipped ``group`` option whose ``_target_`` is ``target`` (None: a
    user's own builder or method, which checks its options itself)."""
    from dso_cli.config.group_schemas import OPTIONS

    for name, options in OPTIONS.get(group, {}).items():
        preset = OmegaConf.load(conf_dir() / group / f"{name}.yaml")
        if target and preset.get("_target_") == target:
            return options
    return None
