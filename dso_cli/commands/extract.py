"""``dso extract``: run a benchmark split through the model once and cache the chosen activations.

The cache folder is ``run_dir`` (one entry per key, see :mod:`dso_cli.steering.activation_cache`); a
second run with the same model, items, rendering, modules, positions and dtype finds the entry and
loads nothing new. Baseline fits read the same entries with ``extract.cache=<that run_dir>``, and
``dso analyze`` reads them to show where the demographic signal lives.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig
from torch import nn
from tqdm.auto import tqdm

from dso_cli.benchmarks import build_benchmark, split_items
from dso_cli.errors import DsoError
from dso_cli.io import write_json
from dso_cli.models.layouts import find_decoder_layers, find_head_projections, find_norm_modules
from dso_cli.pipeline.runs import new_train_dir, save_provenance
from dso_cli.pipeline.setup import load_scored_model
from dso_cli.pipeline.specs import ModelSetup
from dso_cli.scoring import OptionScorer
from dso_cli.steering.activation_cache import MANIFEST, ActivationCache, CacheEntry, CacheRequest, Key
from dso_cli.steering.activations import POSITIONS, collect, usable_items

MODULE_SETS = {
    "norms": "every normalisation module's output",
    "residual": "every decoder layer's output (the residual stream)",
    "heads": "every attention output projection's input (the heads, concatenated)",
}


def module_sets(model: nn.Module, spec: Any) -> dict[str, list[Key]]:
    """``extract.modules``: set names (norms, residual, heads) and/or exact module names -> the keys of
    each entry, in forward order."""
    entries = list(spec) if isinstance(spec, (list, tuple, ListConfig)) else [spec]
    if not entries:
        raise DsoError("extract.modules is empty: name norms, residual, heads or module names")
    named = dict(model.named_modules())
    sets: dict[str, list[Key]] = {}
    for entry in map(str, entries):
        if entry == "norms":
            sets[entry] = [("output", name) for name in find_norm_modules(model)]
        elif entry == "residual":
            sets[entry] = [("output", name) for name in find_decoder_layers(model)]
        elif entry == "heads":
            sets[entry] = [("input", name) for name in find_head_projections(model)[0]]
        elif entry in named:
            sets[entry] = [("output", entry)]
        else:
            raise DsoError(f"extract.modules: {entry!r} is neither {', '.join(MODULE_SETS)} nor a module of this model")
    return sets


def keys_of(sets: dict[str, list[Key]]) -> list[Key]:
    """Every key of ``sets``, once, in the order named."""
    return list(dict.fromkeys(key for keys in sets.values() for key in keys))


def resolve_modules(model: nn.Module, spec: Any) -> list[Key]:
    """Every key ``extract.modules`` names, once, in the order named."""
    return keys_of(module_sets(model, spec))


def check_extract(cfg: DictConfig) -> None:
    """What can be checked before loading the model (``dso extract``, and the cache of train/compare)."""
    positions = cfg.extract.get("positions", "answer")
    if positions not in POSITIONS:
        raise DsoError(f"extract.positions={positions!r}: expected one of {', '.join(POSITIONS)}")
    ActivationCache(".", dtype=cfg.extract.dtype, shard_items=cfg.extract.shard_items)  # validates both


def label_columns(items: Sequence[dict]) -> dict[str, list]:
    """Per item: its id, its counterbalanced pair (probes hold pairs out together) and the demographic
    group of its pro- and anti-stereotypical options (the probes' targets)."""
    return {
        "id": [it["id"] for it in items],
        "group": [it.get("pair_id") or it["id"] for it in items],
        "pro_group": [it["option_groups"][it["pro_option"]] for it in items],
        "anti_group": [it["option_groups"][it["anti_option"]] for it in items],
    }


def run_extract(cfg: DictConfig, overrides: Sequence[str] = ()) -> Path:
    check_extract(cfg)
    run_dir = Path(cfg.run_dir) if cfg.run_dir else new_train_dir(cfg, under="extract")
    splits = build_benchmark(cfg.bias_benchmark, cfg.model)
    split = str(cfg.extract.split)
    if split not in splits:
        raise DsoError(f"extract.split={split!r}: bias={cfg.bias_benchmark.name} has splits {', '.join(splits)}")
    items = usable_items(split_items(splits, split))
    if not items:
        raise DsoError(f"bias={cfg.bias_benchmark.name} split {split} has no ambiguous items with pro and anti options")
    loaded, scorer = load_scored_model(ModelSetup.from_config(cfg))
    sets = module_sets(loaded.model, cfg.extract.modules)
    keys = keys_of(sets)
    cache = ActivationCache(run_dir, dtype=str(cfg.extract.dtype), shard_items=int(cfg.extract.shard_items))
    positions = str(cfg.extract.positions)
    request = cache.request(scorer, items, positions, benchmark=str(cfg.bias_benchmark.name), split=split)
    environment = {"device": str(loaded.device), "dtype": str(loaded.dtype), "scoring": scorer.describe()}
    save_provenance(run_dir, cfg, prefix="extract_", extra=environment)
    names = {name: [module for _, module in members] for name, members in sets.items()}
    about = {"model_name": str(cfg.model.name), "labels": label_columns(items), "module_sets": names}
    entry = cache.find(request, keys)
    if entry is not None:
        if not entry.manifest.get("labels") or not set(names) <= set(entry.manifest.get("module_sets", {})):
            # written by a baseline fit (no labels or module sets): add what dso analyze reads
            sets_known = {**entry.manifest.get("module_sets", {}), **names}
            entry.manifest.update({**about, "module_sets": sets_known})
            write_json(entry.path / MANIFEST, entry.manifest)
        print(f"dso extract: cached, nothing to compute: {entry.path}", flush=True)
    else:
        entry = _write(cache, request, keys, items, scorer, positions, about)
        print(f"dso extract: wrote {entry.path}", flush=True)
    _summary(entry, len(keys))
    return run_dir


def _write(
    cache: ActivationCache,
    request: CacheRequest,
    keys: list[Key],
    items: list[dict],
    scorer: OptionScorer,
    positions: str,
    extra: dict[str, Any],
) -> CacheEntry:
    print(f"dso extract: {len(items)} items x {len(keys)} modules at {positions} positions -> {cache.root}", flush=True)
    bar = tqdm(total=len(range(0, len(items), cache.shard_items)), desc="extract", unit="shard")

    def progress(done: int, total: int) -> None:
        bar.update(done - bar.n)

    entry = cache.write(
        request,
        keys,
        len(items),
        lambda span: collect(scorer, items[span.start : span.stop], keys, scorer.batch_size, positions),
        extra=extra,
        progress=progress,
    )
    bar.close()
    return entry


def _summary(entry: CacheEntry, n_keys: int) -> None:
    size = sum(p.stat().st_size for p in entry.path.glob("*.safetensors"))
    manifest = entry.manifest
    print(
        f"dso extract: {manifest['n_items']} items, {n_keys} of {len(manifest['modules'])} recorded modules, "
        f"{len(manifest['shards'])} shards, {size / 2**20:.1f} MiB ({manifest['dtype']})",
        flush=True,
    )
