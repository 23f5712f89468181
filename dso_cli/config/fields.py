"""One declaration per setting: its default and its help text, in the options class that owns it.

The classes of :mod:`dso_cli.config.schema` and :mod:`dso_cli.config.group_schemas` are registered in
Hydra's ConfigStore as the schemas of the config files, so these defaults are the shipped ones; the YAML
files are presets that override only what differs. ``help`` is what the configuration reference
tables print (as TRL's ``field(metadata={"help": ...})``).
"""

from __future__ import annotations

import copy
import types
import typing
from collections.abc import Mapping
from dataclasses import MISSING as NO_DEFAULT
from dataclasses import Field, field, fields
from typing import Any, ClassVar


def setting(default: Any, help: str) -> Any:
    """A dataclass field with ``default`` (a list or dict is copied per instance) and its ``help``."""
    metadata = {"help": help}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def help_of(cls: type, name: str) -> str:
    """The help text of ``cls``'s setting ``name`` (empty when it has none)."""
    return next((f.metadata.get("help", "") for f in fields(cls) if f.name == name), "")


def default_of(spec: Field) -> Any:
    """The default a field gives a new instance (``omegaconf.MISSING`` when it has none)."""
    from omegaconf import MISSING

    if spec.default is not NO_DEFAULT:
        return spec.default
    if spec.default_factory is not NO_DEFAULT:
        return spec.default_factory()
    return MISSING


def make_options(cls: type, values: Mapping[str, Any], where: str) -> Any:
    """``cls(**values)`` for a builder called by a config (``_target_``) or by hand: absent keys take the
    class's defaults; ``name`` (the preset's label) is dropped; an unknown key is one line naming it."""
    from dso_cli.errors import DsoError

    known = {f.name for f in fields(cls)}
    given = {k: v for k, v in values.items() if k != "name"}
    unknown = sorted(set(given) - known)
    if unknown:
        raise DsoError(f"{where}.{unknown[0]} is not an option here (options: {', '.join(sorted(known))})")
    return cls(**given)


class Counts:
    """Mixin of an options class whose whole-number settings are counts, sizes or seeds: each must be
    ``>= 0`` (None allowed where the type allows it), checked when the class is made, naming the key as
    the user types it (``<section>.<key>``)."""

    section: ClassVar[str] = ""

    def __post_init__(self) -> None:
        from dso_cli.errors import DsoError

        hints = typing.get_type_hints(type(self))
        for spec in fields(self):  # type: ignore[arg-type]
            if int not in allowed_types(hints[spec.name]):
                continue
            value = getattr(self, spec.name)
            if value is None and type(None) in allowed_types(hints[spec.name]):
                continue
            key = f"{self.section}.{spec.name}" if self.section else spec.name
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise DsoError(f"{key}={value!r} must be a whole number >= 0")


def allowed_types(hint: Any) -> tuple:
    """The types a hint allows (``int | None`` -> ``(int, NoneType)``)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return typing.get_args(hint)
    return (hint,)
