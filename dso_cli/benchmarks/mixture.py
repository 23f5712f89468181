"""``mixture``: several bias benchmarks as one, so that one transform is trained on all of them.

Each member is built from its own config (``conf/bias_benchmark/<name>.yaml``) exactly as it would be
alone, so its val/test splits are the ones a single-benchmark run holds out. A key set on the
mixture (``bias.path=...``) reaches every member whose config has that key; ``null`` keeps each
member's own value. Items keep their ``benchmark`` field; their cluster (``occupation``) is prefixed
with it, so that two members' occupations of the same name are separate clusters of POB and of the
trainer's stratified batches. A split exists when any member has it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

import datasets
from omegaconf import OmegaConf

from dso_cli.benchmarks.schema import CLUSTER_SEPARATOR, join_splits
from dso_cli.config.fields import make_options
from dso_cli.config.group_schemas import MixtureOptions
from dso_cli.errors import DsoError

BENCHMARK = "mixture"
SEPARATOR = CLUSTER_SEPARATOR
OWN_KEYS = ("benchmarks", "name", "_target_")


def member_configs(benchmarks: Sequence[str], shared: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Each member's config with the mixture's non-null ``shared`` keys that the member has."""
    from dso_cli.config.files import group_config

    if isinstance(benchmarks, str) or not benchmarks:
        raise DsoError("bias=mixture needs a list of benchmarks: bias.benchmarks=[occupation,synthbias]")
    if BENCHMARK in benchmarks:
        raise DsoError("bias.benchmarks: a mixture cannot contain a mixture")
    if len(set(benchmarks)) != len(benchmarks):
        raise DsoError(f"bias.benchmarks lists a benchmark twice: {list(benchmarks)}")
    members = {}
    for name in benchmarks:
        cfg = OmegaConf.to_container(group_config("bias_benchmark", name, where="bias.benchmarks"), resolve=True)
        assert isinstance(cfg, dict)
        for key, value in shared.items():
            if key in cfg and value is not None and key not in OWN_KEYS:
                cfg[key] = value
        members[name] = cfg
    return members


def build(benchmarks: Sequence[str] | None = None, **shared: Any) -> datasets.DatasetDict:
    """The members' splits, concatenated split by split (clusters prefixed with the benchmark);
    ``benchmarks`` and the keys ``shared`` with the members are :class:`MixtureOptions`' (None: its defaults)."""
    from dso_cli.benchmarks import build_benchmark

    if benchmarks is not None:
        shared["benchmarks"] = benchmarks
    opts = asdict(make_options(MixtureOptions, shared, "bias"))
    members = opts.pop("benchmarks")
    built = {name: build_benchmark(cfg) for name, cfg in member_configs(members, opts).items()}
    return join_splits(built, lambda item, _: dict(item, cluster=f"{item['benchmark']}{SEPARATOR}{item['cluster']}"))


def members(cfg: Mapping[str, Any]) -> list[str]:
    """The member benchmarks of a ``bias_benchmark`` config (just itself when it is no mixture)."""
    if cfg.get("name") == BENCHMARK:
        return list(cfg.get("benchmarks") or ())
    return [str(cfg.get("name"))]
