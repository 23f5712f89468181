"""Fitting the four activation-based baselines with and without the `dso extract` cache, in one process.

Without the cache each fit is its own `dso train steering_method=X` run: a fresh store, its own run of
the model over the training items. With it, `dso extract` runs the model over them once and the four
fits (each again a fresh store, as separate processes would have) read the cached activations. The
script counts the runs over the training items (store passes, model forward calls) and times both.

Usage (~5 min on 2 CPU cores, SmolLM2-135M):

    python scripts/bench_extract.py [key=value ...]
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dso_cli.benchmarks import build_benchmark, split_items  # noqa: E402
from dso_cli.cli import compose_config, rewrite_aliases  # noqa: E402
from dso_cli.commands.extract import label_columns, resolve_modules  # noqa: E402
from dso_cli.pipeline.results import markdown_table  # noqa: E402
from dso_cli.pipeline.setup import load_scored_model, seed_everything  # noqa: E402
from dso_cli.pipeline.specs import ModelSetup  # noqa: E402
from dso_cli.steering.activation_cache import ActivationCache  # noqa: E402
from dso_cli.steering.activations import ActivationStore, collect, usable_items  # noqa: E402
from dso_cli.steering.method import FitJob, make_method  # noqa: E402

METHODS = ("caa", "iti", "mean_match", "leace")


def fit_all(cfg, loaded, scorer, train, val, cache: ActivationCache | None) -> dict[str, Any]:
    """Each method with its own store (as separate runs); what each ran and how long it took."""
    out = {}
    for method in METHODS:
        options = OmegaConf.to_container(
            compose_config("train", [f"steering_method={method}"]).steering_method, resolve=True
        )
        fitter = make_method(options)
        store = ActivationStore(scorer, train, cache=cache, benchmark=str(cfg.bias_benchmark.name), split="train")
        calls = scorer.stats.forward_calls
        started = time.perf_counter()
        fitter.fit(FitJob(loaded, scorer, train, store=store))
        out[method] = {"seconds": time.perf_counter() - started, "passes_over_train": store.passes,
                       "forward_calls": scorer.stats.forward_calls - calls}  # fmt: skip
    return out


def main(argv: list[str]) -> dict[str, Any]:
    overrides = rewrite_aliases(argv)
    cfg = compose_config("extract", overrides, job_name="bench_extract")
    seed_everything(int(cfg.seed))
    loaded, scorer = load_scored_model(ModelSetup.from_config(cfg))
    splits = build_benchmark(cfg.bias_benchmark, cfg.model)
    train = usable_items(split_items(splits, "train"))

    without = fit_all(cfg, loaded, scorer, train, None, None)
    with tempfile.TemporaryDirectory() as tmp:
        cache = ActivationCache(tmp, dtype=str(cfg.extract.dtype), shard_items=int(cfg.extract.shard_items))
        keys = resolve_modules(loaded.model, cfg.extract.modules)
        calls = scorer.stats.forward_calls
        started = time.perf_counter()
        cache.write(cache.request(scorer, train, benchmark=str(cfg.bias_benchmark.name), split="train"), keys,
                    len(train), lambda span: collect(scorer, train[span.start : span.stop], keys, scorer.batch_size),
                    extra={"labels": label_columns(train)})  # fmt: skip
        extract = {"seconds": time.perf_counter() - started, "passes_over_train": 1,
                   "forward_calls": scorer.stats.forward_calls - calls}  # fmt: skip
        cached = fit_all(cfg, loaded, scorer, train, None, cache)
    counted = ("seconds", "passes_over_train", "forward_calls")
    total = {
        "without_cache": {k: sum(m[k] for m in without.values()) for k in counted},
        "with_cache": {k: extract[k] + sum(m[k] for m in cached.values()) for k in counted},
    }
    result = {
        "speedup": total["without_cache"]["seconds"] / total["with_cache"]["seconds"],
        "passes_without_cache": total["without_cache"]["passes_over_train"],
        "passes_with_cache": total["with_cache"]["passes_over_train"],
        "details": {
            "model": str(cfg.model.name_or_path),
            "benchmark": str(cfg.bias_benchmark.name),
            "train_items": len(train),
            "modules": len(keys),
            "extract": extract,
            "without_cache": without,
            "with_cache": cached,
            "total": total,
            "command": " ".join(["python scripts/bench_extract.py", *argv]),
        },
    }
    columns = ["fit", "s, no cache", "runs over train, no cache", "s, cache", "runs over train, cache"]
    rows = []
    for m in METHODS:
        values = [m, without[m]["seconds"], without[m]["passes_over_train"], cached[m]["seconds"]]
        rows.append(dict(zip(columns, [*values, cached[m]["passes_over_train"]], strict=True)))
    rows.append({"fit": "dso extract", "s, cache": extract["seconds"], "runs over train, cache": 1})
    sums = [total[w][k] for w in ("without_cache", "with_cache") for k in ("seconds", "passes_over_train")]
    rows.append(dict(zip(columns, ["total", *sums], strict=True)))
    print(f"bench_extract: {cfg.model.name_or_path} on {cfg.bias_benchmark.name}/train, {len(train)} items", flush=True)
    print(markdown_table(rows, columns, digits=1))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
