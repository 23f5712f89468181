"""Running ``dso`` from tests: in this process by default (the CLI's entry function, its exit caught, its
output captured), since a subprocess re-imports torch, transformers and Hydra for every command; in a
subprocess only where the test is about the process itself (exit status, one line on stderr, signals)."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import subprocess
import sys
import traceback
import types
import warnings
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SMALL = [
    "bias.n_train=64", "bias.n_train_unambiguous=32", "bias.test_pairs_per_occupation=2",
    "bias.val_pairs_per_occupation=1", "optimizer.steps=2", "optimizer.occupations_per_batch=2",
    "optimizer.unambiguous_per_batch=4", "scoring.batch_size=32", "model.device=cpu",
]  # fmt: skip
"""Overrides that shrink a default run to seconds on a tiny model."""

QUIET_ENV = {"HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "PYTHONWARNINGS": "ignore"}


@dataclass
class Result:
    """What a test reads of a ``dso`` command (the fields of ``subprocess.CompletedProcess`` it uses)."""

    returncode: int
    stdout: str
    stderr: str


@contextlib.contextmanager
def _environment(env_vars: dict[str, str], cwd: Path):
    """``env_vars`` set (``PYTHONPATH`` also put on ``sys.path``) and ``cwd`` entered for one command;
    everything restored afterwards, and modules imported from those paths forgotten, so that the next
    command imports a user's package afresh as a new process would."""
    saved_env, saved_path, saved_cwd = dict(os.environ), list(sys.path), Path.cwd()
    extra = [p for p in env_vars.get("PYTHONPATH", "").split(os.pathsep) if p]
    os.environ.update({**QUIET_ENV, **env_vars})
    sys.path[:0] = extra
    os.chdir(cwd)
    try:
        yield
    finally:
        os.chdir(saved_cwd)
        sys.path[:] = saved_path
        os.environ.clear()
        os.environ.update(saved_env)
        roots = [Path(p).resolve() for p in extra]
        for name, module in list(sys.modules.items()):
            where = getattr(module, "__file__", None)
            if where and any(Path(where).resolve().is_relative_to(root) for root in roots):
                del sys.modules[name]


def dso(*args: str, cwd: Path = ROOT, **env_vars: str) -> Result:
    """``dso args...`` in this process: its exit status and what it printed (an exception that escapes
    the CLI is a crash, reported as status 1 with its traceback, as the process would show it)."""
    from dso_cli.cli import main
    from dso_cli.targets import trust

    out, err = io.StringIO(), io.StringIO()
    with _environment(env_vars, cwd), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                code = main(list(args))
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            except BaseException:
                traceback.print_exc()
                code = 1
            finally:
                trust([])  # allow_targets is process-wide in the CLI: no trust outlives its command
    return Result(code, out.getvalue(), err.getvalue())


def dso_process(*args: str, cwd: Path = ROOT, **env_vars: str) -> subprocess.CompletedProcess:
    """``dso args...`` as its own process, for the tests of the process contract (exit status, output)."""
    env = dict(os.environ, **QUIET_ENV, **env_vars)
    return subprocess.run(
        [sys.executable, "-m", "dso_cli.cli", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600
    )


def assert_bad_input(result: Result | subprocess.CompletedProcess, pattern: str) -> None:
    """Status 2, no traceback, and one line that contains ``pattern``."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in (result.stderr + result.stdout).splitlines() if line.strip()]
    assert len(lines) == 1 and pattern in lines[0], lines


def load_script(name: str) -> types.ModuleType:
    """``scripts/<name>.py`` imported as a module, so a test calls its functions in this process."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
