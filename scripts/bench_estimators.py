"""Benchmark of DSO's policy-gradient estimators, as ratios to the exact estimator in one process.

Every estimator trains DSO from zero on the same model, benchmark, seed and batches (the sampler's
random stream does not depend on the estimator) for the same step budget, with the val POB measured
every ``--eval-every`` steps. Reported per estimator: optimisation steps and seconds (evaluation
excluded) until val POB first reaches the target (default: half the base model's val POB), the best
val POB within the budget, the mean val POB over all evaluations (the area under the curve, less
sensitive to one lucky evaluation than the first crossing), and seconds per step; then each as a ratio
to ``exact``. With several seeds every number is the mean over seeds.

Usage (the embedded default, SmolLM2-135M on the occupation benchmark, ~25 min on 2 CPU cores):

    python scripts/bench_estimators.py [--estimators exact,reinforce,rloo,ppo] [--seeds 0]
        [--target-ratio 0.5] [--eval-every 2] [--json OUT.json] [key=value ...]

``key=value`` are ``dso train`` overrides (e.g. ``optimizer.steps=60 model=qwen2_5_0_5b``).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dso_cli.benchmarks import build_benchmark, split_items  # noqa: E402
from dso_cli.cli import compose_config, rewrite_aliases  # noqa: E402
from dso_cli.models.layouts import find_norm_modules  # noqa: E402
from dso_cli.pipeline.fitting import train_config  # noqa: E402
from dso_cli.pipeline.results import markdown_table  # noqa: E402
from dso_cli.pipeline.setup import load_scored_model, seed_everything  # noqa: E402
from dso_cli.pipeline.specs import ModelSetup  # noqa: E402
from dso_cli.rl.estimators import ESTIMATORS  # noqa: E402
from dso_cli.rl.rewards import per_occupation_gap  # noqa: E402
from dso_cli.rl.trainer import train_dso  # noqa: E402
from dso_cli.scoring import policy  # noqa: E402
from dso_cli.steering.affine import apply_affine, init_affine_params  # noqa: E402


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--estimators", default=",".join(ESTIMATORS), help="comma-separated, exact first")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds; numbers are means over them")
    parser.add_argument("--target-ratio", type=float, default=0.5, help="target val POB = ratio x base val POB")
    parser.add_argument("--eval-every", type=int, default=2, help="steps between val POB measurements")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args, overrides = parser.parse_known_args(argv)
    estimators = [e.strip() for e in args.estimators.split(",") if e.strip()]
    unknown = [e for e in estimators if e not in ESTIMATORS]
    if unknown or not estimators or estimators[0] != "exact":
        parser.error(f"--estimators must start with exact and name only {', '.join(ESTIMATORS)}")
    args.estimators = estimators
    args.seeds = [int(s) for s in args.seeds.split(",")]
    return args, rewrite_aliases(overrides)


def val_pob(scorer: Any, items: list[dict]) -> float:
    with torch.no_grad():
        return float(per_occupation_gap(items, policy(scorer.logprobs(items))).abs().mean())


def run_one(cfg: Any, loaded: Any, scorer: Any, train: list[dict], val: list[dict], estimator: str, seed: int,
            eval_every: int, target: float) -> dict[str, Any]:  # fmt: skip
    """Train once; the val POB curve against optimisation steps and seconds."""
    tcfg = replace(train_config(cfg), estimator=estimator, seed=seed, eval_every=eval_every, patience=10**9)
    seed_everything(seed)
    norms = ModelSetup.from_config(cfg).norm_modules
    params = init_affine_params(find_norm_modules(loaded.model, norms), device=loaded.device)
    rows: list[dict[str, float]] = []
    wall = time.perf_counter()
    train_dso(apply_affine, scorer, params, train, instantiate(cfg.reward), tcfg, log=rows.append, val_items=val)
    wall = time.perf_counter() - wall
    seconds, curve = 0.0, []
    for row in rows:
        seconds += row["step_seconds"]
        if "val_pob" in row:
            curve.append({"step": int(row["step"]), "seconds": seconds, "val_pob": row["val_pob"]})
    reached = next((point for point in curve if point["val_pob"] <= target), None)
    return {
        "estimator": estimator,
        "seed": seed,
        "steps_to_target": reached["step"] if reached else math.nan,
        "seconds_to_target": reached["seconds"] if reached else math.nan,
        "best_val_pob": min(point["val_pob"] for point in curve),
        "final_val_pob": curve[-1]["val_pob"],
        "mean_val_pob": statistics.fmean(point["val_pob"] for point in curve),
        "seconds_per_step": seconds / len(rows),
        "wall_seconds": wall,
        "curve": curve,
    }


def summarise(results: list[dict[str, Any]], estimators: list[str]) -> list[dict[str, Any]]:
    """Means over seeds per estimator, and their ratios to exact (nan where the target was missed)."""
    keys = ("steps_to_target", "seconds_to_target", "best_val_pob", "mean_val_pob", "final_val_pob", "seconds_per_step")
    table = []
    for estimator in estimators:
        runs = [r for r in results if r["estimator"] == estimator]
        reached = sum(math.isfinite(r["steps_to_target"]) for r in runs)
        row: dict[str, Any] = {"estimator": estimator, "reached": f"{reached}/{len(runs)}"}
        for key in keys:
            values = [r[key] for r in runs]
            row[key] = statistics.fmean(values) if all(math.isfinite(v) for v in values) else math.nan
        table.append(row)
    exact = table[0]
    for row in table:
        for key, ratio in (("steps_to_target", "steps_ratio"), ("seconds_to_target", "time_ratio"),
                           ("best_val_pob", "best_pob_ratio"), ("mean_val_pob", "mean_pob_ratio"),
                           ("seconds_per_step", "step_cost_ratio")):  # fmt: skip
            row[ratio] = row[key] / exact[key] if exact[key] else math.nan
    return table


def main(argv: list[str]) -> dict[str, Any]:
    args, overrides = parse_args(argv)
    cfg = compose_config("train", overrides, job_name="bench_estimators")
    seed_everything(int(cfg.seed))
    loaded, scorer = load_scored_model(ModelSetup.from_config(cfg))
    splits = build_benchmark(cfg.bias_benchmark, cfg.model)
    train, val = split_items(splits, "train"), split_items(splits, "val")
    val_ambiguous = [item for item in val if item["ambiguous"]]
    base = val_pob(scorer, val_ambiguous)
    target = args.target_ratio * base
    warmup = OmegaConf.merge(cfg, {"optimizer": {"steps": 1}})  # first-call costs are nobody's step time
    run_one(warmup, loaded, scorer, train, val, "exact", args.seeds[0], 1, target)
    print(f"bench_estimators: {cfg.model.name_or_path} on {cfg.bias_benchmark.name}, base val POB {base:.3f}, "
          f"target {target:.3f}, {cfg.optimizer.steps} steps", flush=True)  # fmt: skip
    results = [
        run_one(cfg, loaded, scorer, train, val, estimator, seed, args.eval_every, target)
        for seed in args.seeds
        for estimator in args.estimators
    ]
    table = summarise(results, args.estimators)
    columns = ["estimator", "reached", "steps_to_target", "seconds_to_target", "best_val_pob", "mean_val_pob",
               "seconds_per_step", "steps_ratio", "time_ratio", "best_pob_ratio", "mean_pob_ratio",
               "step_cost_ratio"]  # fmt: skip
    print(markdown_table(table, columns, digits=3))
    out = {
        "model": cfg.model.name_or_path,
        "benchmark": cfg.bias_benchmark.name,
        "steps": int(cfg.optimizer.steps),
        "base_val_pob": base,
        "target_val_pob": target,
        "summary": table,
        "runs": results,
        "command": " ".join(["python scripts/bench_estimators.py", *argv]),
    }
    print(json.dumps({"base_val_pob": base, "target_val_pob": target, "summary": table}, default=str))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=str))
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
