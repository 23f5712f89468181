"""Benchmark of option scoring, as ratios against slower ways of getting the same decisions, in one process.

On one benchmark split (default: the embedded SmolLM2-135M on the occupation test split) it measures:

* **ours**: ``OptionScorer.logprobs`` over the whole split, cold (prompts rendered and tokenised inside
  the timing), as ``dso sweep``/``eval``/``train`` score items: prefix trees by default.
* **naive loop**: one item at a time, each option appended to the prompt and run as its own full
  forward pass with the full-vocabulary log-softmax, as a hand-written scoring loop does.
* **generate-and-parse**: the question without our answer prefix, greedy decoding one item at a time
  until end of turn, a blank line or 256 new tokens (lm-evaluation-harness's ``generate_until``
  defaults), then the first option word in the answer is taken as the decision.
* **matmul FLOP/s**: the best of dense float32 square matrix products (1024, 2048) on this machine,
  the denominator of the FLOP fraction: model matmul FLOPs that scoring needed (linear layers per
  token actually run, attention per query-key pair actually needed, the output head per scored row;
  padding and masked-out pairs not counted) per second of warm scoring.

The per-item baselines run on ``--n-baseline`` items spread evenly over the split (their cost per item
does not depend on the other items); ours scores the whole split, which is how it is used (prefix
sharing grows with the split, so ours is also reported on the same subset). The last line printed is
JSON; its top-level numbers are the three acceptance ratios, everything else is under ``details``.

Linear kernels: where the scorer runs its linear layers through oneDNN (``scoring.cpu_linear``, on CPU),
ours is also timed on the stock kernels, and both baselines run on both; a top-level ratio is against
the baseline's faster run, so no ratio owes anything to a kernel the baseline did not get. The FLOP
fraction's denominator is likewise the faster library's dense matmul.

Usage (~4 min on 2 CPU cores):

    python scripts/bench_scoring.py [--split test] [--n-baseline 64] [--max-new-tokens 256] [key=value ...]

``key=value`` are config overrides (e.g. ``model=qwen2_5_0_5b scoring.tree_tokens=1024``).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dso_cli.benchmarks import build_benchmark, split_items  # noqa: E402
from dso_cli.cli import compose_config, rewrite_aliases  # noqa: E402
from dso_cli.models.layouts import find_decoder_layers  # noqa: E402
from dso_cli.models.linear_kernels import linear, linear_kernel, onednn_available  # noqa: E402
from dso_cli.pipeline.results import markdown_table  # noqa: E402
from dso_cli.pipeline.setup import load_scored_model, scorer_for, seed_everything  # noqa: E402
from dso_cli.pipeline.specs import ModelSetup  # noqa: E402
from dso_cli.scoring import OptionScorer, ScoringStats  # noqa: E402

GENERATION_STOP = "\n\n"


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--split", default="test")
    parser.add_argument("--n-baseline", type=int, default=64, help="items for the per-item baselines")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="generation budget per item")
    parser.add_argument("--repeats", type=int, default=2, help="timed passes of ours (the fastest counts)")
    args, overrides = parser.parse_known_args(argv)
    return args, rewrite_aliases(overrides)


def matmul_flops_per_second(dtype: torch.dtype, device: torch.device) -> dict[str, float]:
    """Best FLOP/s of dense square products per size and library (three timed repetitions after a
    warm-up): ``stock`` is ``a @ b``; on CPU ``onednn`` is the same product through oneDNN, so the peak
    is the machine's, whichever library reaches it."""
    kernels = ["stock"] + (["onednn"] if device.type == "cpu" and dtype == torch.float32 and onednn_available() else [])
    out = {}
    for n in (1024, 2048):
        a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
        b_t = b.T.contiguous()  # a linear layer's weight layout
        for kernel in kernels:
            best = float("inf")
            with torch.no_grad():
                for _ in range(4):
                    _sync(device)
                    start = time.perf_counter()
                    a @ b if kernel == "stock" else linear(a, b_t, None, "onednn")
                    _sync(device)
                    best = min(best, time.perf_counter() - start)
            out[f"{kernel}_{n}"] = 2 * n**3 / best
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def model_flops(model: torch.nn.Module, stats: ScoringStats) -> float:
    """Matmul FLOPs of the work in ``stats``: 2·(linear weights of the decoder layers) per token, 2·2·(query
    width) per attended query-key pair and layer, 2·(head weights) per head row."""
    layers = [model.get_submodule(name) for name in find_decoder_layers(model)]
    linear = sum(
        m.weight.numel() for layer in layers for m in layer.modules() if isinstance(m, torch.nn.Linear)
    ) + sum(  # GPT-2 style fused projections
        m.weight.numel() for layer in layers for m in layer.modules() if type(m).__name__ == "Conv1D"
    )
    config = getattr(model.config, "text_config", None) or model.config
    heads = getattr(config, "num_attention_heads", None) or config.n_head
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    head = model.get_output_embeddings().weight.numel()
    return (
        2.0 * linear * stats.tokens
        + 4.0 * heads * head_dim * stats.attended_pairs * len(layers)
        + (2.0 * head * stats.head_rows)
    )


def time_ours(scorer: OptionScorer, items: list[dict], cold: bool) -> tuple[float, torch.Tensor, ScoringStats]:
    if cold:
        scorer._cache.clear()  # rendering and tokenisation inside the timing
    scorer.stats = ScoringStats()
    _sync(scorer.device)
    start = time.perf_counter()
    with torch.no_grad():
        logprobs = scorer.logprobs(items)
    _sync(scorer.device)
    return time.perf_counter() - start, logprobs, scorer.stats


def naive_loop(scorer: OptionScorer, items: list[dict], kernel: str = "stock") -> tuple[float, torch.Tensor]:
    """One full forward per (item, option), batch size 1, full-vocabulary log-softmax."""
    model = scorer.model
    out = torch.full((len(items), max(len(i["options"]) for i in items)), float("-inf"))
    start = time.perf_counter()
    with torch.no_grad(), linear_kernel(model, kernel):
        for row, item in enumerate(items):
            text = scorer.render(item)
            prompt_len = len(scorer._ids(text))
            for k, option in enumerate(item["options"]):
                ids = scorer._ids(text + option)
                logits = model(input_ids=torch.tensor([ids], device=scorer.device)).logits[0]
                logprobs = torch.log_softmax(logits.float(), dim=-1)
                out[row, k] = sum(float(logprobs[t - 1, ids[t]]) for t in range(prompt_len, len(ids)))
    _sync(scorer.device)
    return time.perf_counter() - start, out


def question_only(scorer: OptionScorer, item: dict) -> str:
    """The prompt as a generation-based evaluation shows it: our answer prefix removed."""
    text = scorer.render(item)
    prefix = item["answer_prefix"]
    return text[: -len(prefix)] if prefix and text.endswith(prefix) else text


def parse_answer(text: str, options: list[str]) -> int | None:
    """The option whose words appear first in the generated text (whole words, case-insensitive)."""
    found = []
    for k, option in enumerate(options):
        match = re.search(rf"\b{re.escape(option.strip().lower())}\b", text.lower())
        if match:
            found.append((match.start(), -len(option), k))
    return min(found)[2] if found else None


def generate_and_parse(
    scorer: OptionScorer, items: list[dict], max_new_tokens: int, kernel: str = "stock"
) -> tuple[float, list, list]:
    model, tokenizer = scorer.model, scorer.tokenizer
    answers, new_tokens = [], []
    start = time.perf_counter()
    with torch.no_grad(), linear_kernel(model, kernel):
        for item in items:
            ids = torch.tensor([scorer._ids(question_only(scorer, item))], device=scorer.device)
            generated = model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False,
                stop_strings=[GENERATION_STOP], tokenizer=tokenizer, pad_token_id=tokenizer.pad_token_id
                or tokenizer.eos_token_id,
            )[0, ids.shape[1] :]  # fmt: skip
            text = tokenizer.decode(generated, skip_special_tokens=True)
            answers.append(parse_answer(text, list(item["options"])))
            new_tokens.append(len(generated))
    _sync(scorer.device)
    return time.perf_counter() - start, answers, new_tokens


def evenly_spaced(items: list[dict], n: int) -> list[dict]:
    if n >= len(items):
        return list(items)
    return [items[round(k * (len(items) - 1) / (n - 1))] for k in range(n)] if n > 1 else items[:1]


def bench_setup(
    verb: str, overrides: list[str], split: str, job_name: str
) -> tuple[Any, Any, OptionScorer, list[dict]]:
    """The config ``dso <verb>`` runs with, its model and scorer (seeded), and the items of ``split``."""
    cfg = compose_config(verb, overrides, job_name=job_name)
    seed_everything(int(cfg.seed))
    loaded, scorer = load_scored_model(ModelSetup.from_config(cfg))
    return cfg, loaded, scorer, split_items(build_benchmark(cfg.bias_benchmark, cfg.model), split)


def main(argv: list[str]) -> dict[str, Any]:
    args, overrides = parse_args(argv)
    cfg, loaded, scorer, items = bench_setup("eval", overrides, args.split, "bench_scoring")
    setup = ModelSetup.from_config(cfg)
    subset = evenly_spaced(items, args.n_baseline)
    device, dtype = scorer.device, scorer.head.weight.dtype
    threads = torch.get_num_threads()

    kernel = scorer.linear_kernel
    kernels = ["stock"] + ([kernel] if kernel != "stock" else [])

    # warm-up: first calls allocate and pick kernels; nobody's timing pays for them
    time_ours(scorer, items[:8], cold=True)
    for k in kernels:
        naive_loop(scorer, items[:1], k)
        generate_and_parse(scorer, items[:1], 4, k)

    ours_runs = [time_ours(scorer, items, cold=True) for _ in range(max(1, args.repeats))]
    ours_seconds, ours_logprobs, ours_stats = min(ours_runs, key=lambda run: run[0])
    warm_seconds, _, warm_stats = time_ours(scorer, items, cold=False)
    subset_seconds, subset_logprobs, _ = time_ours(scorer, subset, cold=True)
    naive = {k: naive_loop(scorer, subset, k) for k in kernels}
    generation = {k: generate_and_parse(scorer, subset, args.max_new_tokens, k) for k in kernels}
    matmul = matmul_flops_per_second(dtype, device)
    rows_scorer = scorer_for(loaded, setup, prefix_tree=False)
    rows_seconds, rows_logprobs, rows_stats = time_ours(rows_scorer, items, cold=True)
    stock_scorer = scorer_for(loaded, setup, cpu_linear="stock") if kernel != "stock" else scorer
    stock_seconds, stock_logprobs, _ = time_ours(stock_scorer, items, cold=True)

    ours_rate = len(items) / ours_seconds
    naive_rate = {k: len(subset) / seconds for k, (seconds, _) in naive.items()}
    gen_rate = {k: len(subset) / seconds for k, (seconds, _, _) in generation.items()}
    _, answers, new_tokens = generation["stock"]
    peak = max(matmul.values())
    flops_warm = model_flops(loaded.model, warm_stats) / warm_seconds
    flops_cold = model_flops(loaded.model, ours_stats) / ours_seconds
    choices = subset_logprobs.argmax(-1).tolist()
    parsed = [(a, c) for a, c in zip(answers, choices, strict=True) if a is not None]
    result = {  # each baseline at its faster kernel
        "speedup_vs_naive_loop": ours_rate / max(naive_rate.values()),
        "speedup_vs_generate_and_parse": ours_rate / max(gen_rate.values()),
        "flop_fraction_of_matmul": flops_warm / peak,
        "items_per_second": ours_rate,
        "details": {
            "model": str(cfg.model.name_or_path),
            "benchmark": str(cfg.bias_benchmark.name),
            "split": args.split,
            "device": str(device),
            "dtype": str(dtype).removeprefix("torch."),
            "threads": threads,
            "linear_kernel": kernel,
            "items": len(items),
            "baseline_items": len(subset),
            "ours": {
                "seconds": ours_seconds,
                "items_per_second": ours_rate,
                "tokens_run": ours_stats.tokens,
                "prompt_tokens": sum(len(scorer.encode(i).prompt_ids) for i in items),
                "forward_calls": ours_stats.forward_calls,
                "warm_seconds": warm_seconds,
                "flops_per_second_warm": flops_warm,
                "flops_per_second_cold": flops_cold,
                "flop_fraction_cold": flops_cold / peak,
                "subset_items_per_second": len(subset) / subset_seconds,
            },
            "ours_on_stock_kernels": {
                "items_per_second": len(items) / stock_seconds,
                "speedup_of_kernel": stock_seconds / ours_seconds,
                "max_abs_logprob_difference": float((stock_logprobs - ours_logprobs).abs().max()),
            },
            "rows_without_prefix_trees": {
                "items_per_second": len(items) / rows_seconds,
                "tokens_run": rows_stats.tokens,
                "speedup_of_trees": rows_seconds / ours_seconds,
                "max_abs_logprob_difference": float((rows_logprobs - ours_logprobs).abs().max()),
            },
            "naive_loop": {
                "items_per_second": naive_rate["stock"],
                "speedup": ours_rate / naive_rate["stock"],
                "max_abs_logprob_difference": float((naive["stock"][1] - subset_logprobs.cpu()).abs().max()),
                "same_kernel": {"items_per_second": naive_rate[kernel], "speedup": ours_rate / naive_rate[kernel]},
            },
            "generate_and_parse": {
                "items_per_second": gen_rate["stock"],
                "speedup": ours_rate / gen_rate["stock"],
                "max_new_tokens": args.max_new_tokens,
                "mean_new_tokens": sum(new_tokens) / len(new_tokens),
                "parsed_fraction": len(parsed) / len(answers),
                "agreement_with_scoring": sum(a == c for a, c in parsed) / len(parsed) if parsed else float("nan"),
                "speedup_on_same_items": (len(subset) / subset_seconds) / gen_rate["stock"],
                "same_kernel": {"items_per_second": gen_rate[kernel], "speedup": ours_rate / gen_rate[kernel]},
            },
            "matmul_flops_per_second": matmul,
            "command": " ".join(["python scripts/bench_scoring.py", *argv]),
        },
    }
    tokens = f"≤{args.max_new_tokens} tokens"
    table = [
        {"method": f"ours (prefix trees, {kernel} linear)", "items/s": ours_rate, "ratio": 1.0},
        {"method": f"ours, per-item rows ({kernel})", "items/s": len(items) / rows_seconds,
         "ratio": rows_seconds / ours_seconds},
    ]  # fmt: skip
    if kernel != "stock":
        table.append({"method": "ours (prefix trees, stock linear)", "items/s": len(items) / stock_seconds,
                      "ratio": stock_seconds / ours_seconds})  # fmt: skip
    for k in kernels:
        table.append({"method": f"naive loop ({k})", "items/s": naive_rate[k], "ratio": ours_rate / naive_rate[k]})
    for k in kernels:
        table.append({"method": f"generate-and-parse ({tokens}, {k})", "items/s": gen_rate[k],
                      "ratio": ours_rate / gen_rate[k]})  # fmt: skip
    print(f"bench_scoring: {cfg.model.name_or_path} on {cfg.bias_benchmark.name}/{args.split}, {device} {dtype}, "
          f"{threads} threads; ratio = our items/s over the method's", flush=True)  # fmt: skip
    print(markdown_table(table, ["method", "items/s", "ratio"], digits=2))
    best = max(matmul, key=matmul.get)
    print(f"FLOP/s during warm scoring: {flops_warm / 1e9:.1f} G = {flops_warm / peak:.0%} of dense matmul "
          f"({peak / 1e9:.1f} G, {best}); generation: {result['details']['generate_and_parse']['mean_new_tokens']:.1f} "
          f"new tokens/item, {len(parsed)}/{len(answers)} parsed")  # fmt: skip
    print(json.dumps(result, default=str))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
