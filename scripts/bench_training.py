"""Benchmark of a DSO training step, as ratios in one process: against the previous step
implementation on the same batches, and against this machine's dense matmul peak.

With the default model, benchmark and optimizer (``dso train``'s config, any ``key=value`` override
applied), it trains ``--warmup + --steps`` steps twice from the same seed, the same batches and the
same initial parameters:

* **previous**: the base model's forward pass on the step's KL passages and prompts every step, the
  text KL over right-padded rows (the head on every position), and the passes with gradients on
  the stock (MKL) linear kernels;
* **ours**: those targets rebuilt from the base model's last hidden states, computed once per
  sequence and cached (:class:`dso_cli.rl.batches.BaseCache`); the text KL over prefix trees (a
  shared prefix once, no padding, the head once per distinct predicting node:
  :mod:`dso_cli.rl.text_kl`); and the passes with gradients on the scorer's linear kernel (oneDNN on
  CPU where it is faster: :class:`dso_cli.models.linear_kernels.FrozenWeightLinear`).

Both end with the same parameters up to float rounding (printed as ``max_param_diff``; a test asserts
it). Seconds per phase come from :class:`dso_cli.rl.phases.PhaseTimer` over the timed steps.

**FLOP fraction.** The model matmul FLOPs a step needs, counted from what the scorer ran (padding and
masked query-key pairs excluded): forward passes with gradients cost their forward matmuls plus the
input gradients (linear layers and head ×2, attention ×3; the model's own weights are frozen, so no
weight gradients), passes without gradients their forward matmuls; ``ours``' passes are the needed
ones. Divided by the step's seconds and by the best dense float32 matmul FLOP/s measured here
(:func:`bench_scoring.matmul_flops_per_second`), it is ``train_flop_fraction``.

Peak RSS is the process's (it only grows): read after ``previous`` and after ``ours``, a rise means
ours needed more memory.

Usage (~4 min on 2 CPU cores):

    python scripts/bench_training.py [--steps 3] [--warmup 1] [key=value ...]

The last line printed is JSON with ``train_flop_fraction``, ``speedup_vs_previous`` and ``details``.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_scoring import bench_setup, matmul_flops_per_second  # noqa: E402

from dso_cli.cli import rewrite_aliases  # noqa: E402
from dso_cli.models.layouts import find_decoder_layers, find_norm_modules  # noqa: E402
from dso_cli.models.linear_kernels import onednn_gradient_passes  # noqa: E402
from dso_cli.pipeline.fitting import training_inputs  # noqa: E402
from dso_cli.pipeline.results import markdown_table  # noqa: E402
from dso_cli.rl.phases import PhaseTimer  # noqa: E402
from dso_cli.rl.trainer import train_dso  # noqa: E402
from dso_cli.scoring import OptionScorer, ScoringStats  # noqa: E402
from dso_cli.steering.affine import apply_affine, init_affine_params  # noqa: E402

IMPLEMENTATIONS = {
    "previous": {"fast_step": False, "onednn_gradients": False},
    "ours": {"fast_step": True, "onednn_gradients": True},
}


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=3, help="timed steps per implementation")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (allocator, caches)")
    args, overrides = parser.parse_known_args(argv)
    return args, rewrite_aliases(overrides)


class WorkCounter:
    """The scorer's work split by whether gradients flow (the backward pass then runs too)."""

    def __init__(self, scorer: OptionScorer) -> None:
        self.grad, self.no_grad = ScoringStats(), ScoringStats()
        self.head_grad = self.head_no_grad = 0
        add, head = scorer.stats.add, scorer.head_logprobs

        def counted_add(tokens: int, attended_pairs: int, head_rows: int) -> None:
            add(tokens, attended_pairs, head_rows)
            (self.grad if torch.is_grad_enabled() else self.no_grad).add(tokens, attended_pairs, head_rows)

        def counted_head(hidden: torch.Tensor) -> torch.Tensor:
            rows = int(hidden.shape[:-1].numel())  # every position of a padded batch: an upper bound
            if torch.is_grad_enabled():
                self.head_grad += rows
            else:
                self.head_no_grad += rows
            return head(hidden)

        scorer.stats.add = counted_add  # type: ignore[method-assign]
        scorer.head_logprobs = counted_head  # type: ignore[method-assign]

        self.scorer = scorer

    def reset(self) -> None:
        self.grad, self.no_grad = ScoringStats(), ScoringStats()
        self.head_grad = self.head_no_grad = 0

    def remove(self) -> None:
        """The scorer's own methods again."""
        del self.scorer.stats.add, self.scorer.head_logprobs


def model_shape(model: torch.nn.Module) -> dict[str, int]:
    layers = [model.get_submodule(name) for name in find_decoder_layers(model)]
    config = getattr(model.config, "text_config", None) or model.config
    heads = getattr(config, "num_attention_heads", None) or config.n_head
    return {
        "linear": sum(m.weight.numel() for layer in layers for m in layer.modules() if isinstance(m, torch.nn.Linear)),
        "layers": len(layers),
        "query_width": heads * (getattr(config, "head_dim", None) or config.hidden_size // heads),
        "head": model.get_output_embeddings().weight.numel(),
    }


def step_flops(shape: dict[str, int], work: WorkCounter) -> dict[str, float]:
    """Matmul FLOPs of the counted work: forward, and the input gradients of the passes with gradients."""

    def forward(stats: ScoringStats, head_rows: int) -> tuple[float, float, float]:
        return (
            2.0 * shape["linear"] * stats.tokens,
            4.0 * shape["query_width"] * stats.attended_pairs * shape["layers"],
            2.0 * shape["head"] * (stats.head_rows + head_rows),
        )

    lin, att, head = forward(work.grad, work.head_grad)
    lin0, att0, head0 = forward(work.no_grad, work.head_no_grad)
    return {"with_grad": 2 * lin + 3 * att + 2 * head, "no_grad": lin0 + att0 + head0}


def run(
    name: str, scorer: OptionScorer, make_params: Callable[[], dict[str, torch.Tensor]], inputs: Any, items: list,
    args: argparse.Namespace,
) -> dict[str, Any]:  # fmt: skip
    cfg = inputs.config
    cfg.steps = args.warmup + args.steps
    timer, work = PhaseTimer(), WorkCounter(scorer)
    seconds: list[float] = []

    def log(row: dict[str, float]) -> None:
        if row["step"] <= args.warmup:
            timer.reset()
            work.reset()
        else:
            seconds.append(row["step_seconds"])

    params = make_params()
    options = dict(IMPLEMENTATIONS[name])
    with onednn_gradient_passes(options.pop("onednn_gradients")):
        train_dso(apply_affine, scorer, params, items, inputs.reward, cfg, log=log,
                  text_passages=inputs.text_passages, timer=timer, **options)  # fmt: skip
    work.remove()
    n = len(seconds)
    return {
        "step_seconds": sum(seconds) / n,
        "phases": {k: v / n for k, v in sorted(timer.seconds.items())},
        "flops": {k: v / n for k, v in step_flops(model_shape(scorer.model), work).items()},
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "params": {k: v.detach().cpu().clone() for k, v in params.items()},
    }


def main(argv: list[str]) -> dict[str, Any]:
    args, overrides = parse_args(argv)
    cfg, loaded, scorer, items = bench_setup("train", overrides, "train", "bench_training")
    inputs = training_inputs(cfg)
    modules = find_norm_modules(loaded.model, cfg.model.get("norm_modules"))

    def make_params() -> dict[str, torch.Tensor]:
        return init_affine_params(modules, device=loaded.device)

    results = {name: run(name, scorer, make_params, inputs, items, args) for name in IMPLEMENTATIONS}
    ours, previous = results["ours"], results["previous"]
    diff = max(float((ours["params"][k] - previous["params"][k]).abs().max()) for k in ours["params"])
    peak = max(matmul_flops_per_second(torch.float32, loaded.device).values())
    needed = ours["flops"]["with_grad"] + ours["flops"]["no_grad"]
    rows = [
        {"implementation": name, "step s": r["step_seconds"], **{f"{k} s": v for k, v in r["phases"].items()},
         "GFLOP": (r["flops"]["with_grad"] + r["flops"]["no_grad"]) / 1e9, "peak RSS MB": r["peak_rss_mb"]}
        for name, r in results.items()
    ]  # fmt: skip
    columns = list(dict.fromkeys(k for row in rows for k in row))
    print(markdown_table(rows, columns))
    result = {
        "train_flop_fraction": needed / ours["step_seconds"] / peak,
        "speedup_vs_previous": previous["step_seconds"] / ours["step_seconds"],
        "details": {
            "model": cfg.model.name,
            "threads": torch.get_num_threads(),
            "timed_steps": args.steps,
            "matmul_flops_per_second": peak,
            "needed_gflop_per_step": needed / 1e9,
            "max_param_diff": diff,
            **{name: {k: v for k, v in r.items() if k != "params"} for name, r in results.items()},
        },
    }
    print(json.dumps(result, default=str))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
