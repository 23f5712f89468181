"""Make ``lm_eval --model dso`` work on lm-eval versions that do not discover ``lm_eval.models`` entry
points (0.4.x): a one-line ``.pth`` file in site-packages runs :func:`watch` at interpreter start,
which registers ``dso`` in lm-eval's model registry right after lm-eval creates it, as a lazy
``module:Class`` path (nothing of dso or torch is imported until lm-eval asks for the model).

    python -m dso_cli.integrations.lm_eval_plugin install     # make setup runs this
    python -m dso_cli.integrations.lm_eval_plugin uninstall
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import sysconfig
from pathlib import Path
from types import ModuleType

REGISTRY = "lm_eval.api.registry"
TARGET = "dso_cli.integrations.lm_eval:DsoLM"
PTH = "dso_lm_eval.pth"
PTH_LINE = (
    "import importlib.util as _u; _u.find_spec('dso_cli') and "
    "__import__('dso_cli.integrations.lm_eval_plugin', fromlist=['watch']).watch()\n"
)


def register(registry: ModuleType) -> None:
    if "dso" not in registry.model_registry:
        registry.model_registry.register("dso", target=TARGET)


class _Watcher(importlib.abc.MetaPathFinder):
    """Finds nothing itself; when lm-eval's registry module is found, registers ``dso`` after it runs."""

    def find_spec(self, name, path, target=None):  # type: ignore[override]
        if name != REGISTRY:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        original = spec.loader.exec_module

        def exec_module(module: ModuleType) -> None:
            original(module)
            register(module)

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def watch() -> None:
    """Register ``dso`` now if lm-eval's registry is already imported, else once it is."""
    if REGISTRY in sys.modules:
        register(sys.modules[REGISTRY])
    elif not any(isinstance(f, _Watcher) for f in sys.meta_path):
        sys.meta_path.insert(0, _Watcher())


def pth_path() -> Path:
    return Path(sysconfig.get_paths()["purelib"]) / PTH


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args == ["install"]:
        pth_path().write_text(PTH_LINE)
        print(f"wrote {pth_path()}: lm_eval --model dso is available")
    elif args == ["uninstall"]:
        pth_path().unlink(missing_ok=True)
        print(f"removed {pth_path()}")
    else:
        print("usage: python -m dso_cli.integrations.lm_eval_plugin install|uninstall", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
