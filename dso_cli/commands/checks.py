"""Each verb's checks of its composed config, beyond the ones every verb shares
(:func:`dso_cli.config.validation.check_config`): strength grids, names of benchmarks and capability
sets, the trainer's settings. Run up front for a single run and again inside every multirun job
(whose swept values are only known there), so bad input fails before any work with one line."""

from __future__ import annotations

from dso_cli.config.files import check_option
from dso_cli.config.validation import check_config
from dso_cli.errors import DsoError


def check_verb(verb: str, cfg) -> None:
    """Everything checked after composition for ``dso <verb>``."""
    from dso_cli.pipeline.runs import parse_strengths  # here: it imports torch, and bad input fails fast

    check_config(cfg)
    if verb in ("sweep", "eval", "generate"):
        parse_strengths(cfg.alpha)
    if verb == "prune" and cfg.get("alpha") is not None and len(parse_strengths(cfg.alpha)) != 1:
        raise DsoError(f"alpha={cfg.alpha} must be one strength for dso prune")
    if verb == "train":
        from dso_cli.pipeline.fitting import train_config
        from dso_cli.steering.method import make_method

        if make_method(cfg.steering_method).trained:
            train_config(cfg)
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
                check_option(group, str(name))
