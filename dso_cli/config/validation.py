"""Checks of a composed config that composition cannot make and that hold for every verb: missing
values and whole-number counts. Each verb's own checks (grids, names of sets and methods) live with
the verb (:mod:`dso_cli.commands.checks`)."""

from __future__ import annotations

from dso_cli.config.files import schema_error
from dso_cli.errors import DsoError


def check_config(cfg) -> None:
    """Missing values and counts, whatever the verb."""
    from omegaconf import OmegaConf

    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise DsoError(f"{missing[0]} must be set (e.g. {missing[0]}=VALUE)")
    check_values(cfg)


COUNTS = ("seed", "sweep.bootstrap_reps", "prune.bootstrap_reps", "eval.bootstrap_reps", "compare.bootstrap_reps",
          "compare.hypervolume_bootstrap_reps", "analyze.folds", "generate.max_items",
          "generate.max_new_tokens", "eval.lm_eval_limit", "eval.lm_eval_batch_size")  # fmt: skip
"""Keys that must be whole numbers >= 0 wherever the verb has them."""


def check_values(cfg) -> None:
    """Values that compose but are out of range: one line naming the key, before any work is done."""
    from omegaconf import OmegaConf

    for key in COUNTS:
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None:
            _whole(key, value)
    bench = cfg.get("bias_benchmark") or {}
    for key, value in bench.items():  # sizes of the built-in builders: counts of items, pairs or rows
        if value is not None and (key.startswith(("n_", "max_")) or key.endswith("_per_occupation")):
            _whole(f"bias.{key}", value)


def _whole(key: str, value) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise DsoError(f"{key}={value!r} must be a whole number >= 0") from None
    if isinstance(value, bool) or not number.is_integer() or number < 0:
        raise DsoError(f"{key}={value!r} must be a whole number >= 0")
    return int(number)


def typed_error(exc: BaseException) -> str | None:
    """``key: what was wrong`` from the schema's validation error behind a composition error, if any."""
    found = schema_error(exc)
    if found is None:
        return None
    key, msg = found
    if key.startswith("bias_benchmark."):  # as the user types it (the `bias=` alias)
        key = "bias." + key[len("bias_benchmark.") :]
    return f"{key}: {msg}"
