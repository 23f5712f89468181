"""Checks of a composed config that composition cannot make: missing values, ranges, grids, names of
sets and methods. Run up front for a single run, and again inside every multirun job."""

from __future__ import annotations

from dso_cli.config_files import group_options, schema_error
from dso_cli.errors import DsoError


def check_config(verb: str, cfg) -> None:
    """Everything checked after composition: missing values, ranges, grids, names. Run up front for a
    single run and again inside every multirun job (whose sweep values are only known there)."""
    from omegaconf import OmegaConf

    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise DsoError(f"{missing[0]} must be set (e.g. {missing[0]}=VALUE)")
    check_values(verb, cfg)
    if verb in ("sweep", "eval", "generate"):
        from dso_cli.runs import parse_strengths

        parse_strengths(cfg.alpha)
    if verb == "generate":
        from dso_cli.commands.generate import settings_of

        settings_of(cfg)
    if verb == "prune":
        from dso_cli.commands.prune import parse_keep

        parse_keep(cfg.keep)
    if verb == "export":
        from dso_cli.commands.export import check_export

        check_export(cfg)
    if verb in ("extract", "train", "compare"):
        from dso_cli.commands.extract import check_extract

        check_extract(cfg)
    if verb == "compare":
        from dso_cli.commands.compare import check_compare

        check_compare(cfg)
    if verb == "eval":
        for group, names in (("bias_benchmark", cfg.eval.benchmarks), ("capability", cfg.eval.capability)):
            for name in names or []:
                if name not in group_options(group):
                    what = "bias benchmark" if group == "bias_benchmark" else "capability set"
                    raise DsoError(f"unknown {what} {name!r} (choose from: {', '.join(group_options(group))})")


COUNTS = ("seed", "sweep.bootstrap_reps", "prune.bootstrap_reps", "eval.bootstrap_reps", "compare.bootstrap_reps",
          "compare.hypervolume_bootstrap_reps", "analyze.folds", "generate.max_items",
          "generate.max_new_tokens", "eval.lm_eval_limit", "eval.lm_eval_batch_size")  # fmt: skip
"""Keys that must be whole numbers >= 0 wherever the verb has them."""


def check_values(verb: str, cfg) -> None:
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
    if verb == "prune" and cfg.get("alpha") is not None:
        from dso_cli.runs import parse_strengths

        if len(parse_strengths(cfg.alpha)) != 1:
            raise DsoError(f"alpha={cfg.alpha} must be one strength for dso prune")
    if verb == "train":
        from dso_cli.fitting import train_config
        from dso_cli.steering.method import make_method

        if make_method(cfg.steering_method).trained:
            train_config(cfg)


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
