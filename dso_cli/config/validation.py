"""Checks of a composed config that composition cannot make and that hold for every verb: missing
values and out-of-range values (by the options classes). Each verb's own checks (grids, names of sets
and methods) live with the verb (:mod:`dso_cli.commands.checks`)."""

from __future__ import annotations

from dataclasses import fields

from dso_cli.config.files import schema_error
from dso_cli.errors import DsoError


def check_config(cfg) -> None:
    """Missing values and out-of-range values, whatever the verb."""
    from omegaconf import OmegaConf

    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise DsoError(f"{missing[0]} must be set (e.g. {missing[0]}=VALUE)")
    check_values(cfg)


def check_values(cfg) -> None:
    """Values that compose but are out of range, checked by the options classes that define them (their
    ``__post_init__``): the verb's typed sections are made as objects, and the bias benchmark's options
    class (found by its builder) from its section. One line naming the key, before any work is done."""
    from omegaconf import OmegaConf

    from dso_cli.config.fields import make_options
    from dso_cli.config.files import options_for_target
    from dso_cli.config.schema import SCHEMAS

    schema = SCHEMAS.get(str(cfg.get("verb")))
    if schema is not None:  # the verb's schema as objects: model, optimizer, scoring, every section
        OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), cfg))
    bench = cfg.get("bias_benchmark") or {}
    options = options_for_target("bias_benchmark", str(bench.get("_target_", "")))
    if options is not None:
        plain = OmegaConf.to_container(bench, resolve=True) if OmegaConf.is_config(bench) else dict(bench)
        known = {f.name for f in fields(options)}  # `dso eval`'s bias.<key>= may be meant for another benchmark
        make_options(options, {k: v for k, v in plain.items() if k in known}, "bias")


def typed_error(exc: BaseException) -> str | None:
    """``key: what was wrong`` from the schema's validation error behind a composition error, if any."""
    found = schema_error(exc)
    if found is None:
        return None
    key, msg = found
    if key.startswith("bias_benchmark."):  # as the user types it (the `bias=` alias)
        key = "bias." + key[len("bias_benchmark.") :]
    return f"{key}: {msg}"
