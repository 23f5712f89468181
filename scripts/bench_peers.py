"""CAA fitted by dso against the `steering-vectors` library: same model, data, layer and read position.

Both fit the mean difference of one decoder layer's output (the residual stream) between anti- and
pro-stereotypical completions of the benchmark's ambiguous training items, read at the completion's
last token, in one process, with the same number of threads:

- ours: what ``dso train steering_method=caa`` runs, an :class:`ActivationStore` pass over the items
  and ``fit_caa`` (tokenisation included: each timed run gets a fresh scorer). ``fit_caa`` is given the
  one layer, so only that layer is recorded; the default fit records the five candidate layers and
  picks one on ``val``: that pass is timed too (``ours_candidate_pass_seconds``, the selection on
  ``val`` separately as ``ours_selection_seconds``), and without ``--layer`` the layer it selects is
  the layer both fits use. The store runs the completions as our scorer packs them: with
  ``scoring.prefix_tree=true`` (the default, text items) both completions of every item share one
  copy of their prompt in prefix trees of ``scoring.tree_tokens`` tokens, so ``--batch-size`` does not
  apply to ours; ``scoring.prefix_tree=false`` makes it run right-padded batches of ``--batch-size``
  completions, the library's layout (``ours_packing`` says which ran).
- steering-vectors: ``train_steering_vector`` with its mean aggregator on (positive, negative) =
  (prompt + anti option, prompt + pro option) strings, the prompt rendered with our scorer's chat
  template, ``read_token_index=-1``, and its decoder-block matcher pinned to the module our layout
  registry names, ``--batch-size`` pairs per batch (its positive and negative halves run as two
  forward passes of that many rows). Building the strings from the items is inside its timed region,
  as tokenisation is inside ours. Its tokenizer is a copy padded on the right, as our rows are: the library passes no
  position ids, so left padding would shift the positions of the shorter rows (harmless under RoPE,
  not with absolute position embeddings such as GPT-2's).

Each fit runs once over the first ``--warmup-items`` items before the timed runs. With ``--repeats``
above 1 the two fits alternate which goes first, and the medians are reported. The vectors are
compared by cosine, ``|‖sv‖ − ‖ours‖| / ‖ours‖`` (relative_norm_difference) and ``‖sv − ours‖ / ‖ours‖``
(relative_difference); ``n_token_mismatches`` counts completions whose library tokenisation differs
from the token ids our scorer runs (0 means both read the same token of the same sequence).

Needs ``steering-vectors`` (installed by ``make setup``, with ``--no-deps``: it declares
transformers<5, and imports scikit-learn). Usage (the embedded default, SmolLM2-135M on the
occupation benchmark, 600 training items; about 5 min on 2 idle CPU cores, most of it the library's
fit; several times longer when other jobs share the cores):

    python scripts/bench_peers.py [--layer N] [--repeats 1] [--batch-size B] [--threads T]
        [--warmup-items 32] [--json OUT.json] [key=value ...]

``key=value`` are ``dso train`` overrides (e.g. ``scoring.prefix_tree=false`` or
``model=qwen2_5_0_5b bias.n_train=200``).
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dso_cli.benchmarks import build_benchmark, split_items  # noqa: E402
from dso_cli.cli import compose_config  # noqa: E402
from dso_cli.config.group_schemas import CAAOptions  # noqa: E402
from dso_cli.models.layouts import find_decoder_layers  # noqa: E402
from dso_cli.models.linear_kernels import linear_kernel  # noqa: E402
from dso_cli.models.loading import LoadedModel  # noqa: E402
from dso_cli.pipeline.results import markdown_table  # noqa: E402
from dso_cli.pipeline.setup import load_scored_model, scorer_for, seed_everything  # noqa: E402
from dso_cli.pipeline.specs import ModelSetup  # noqa: E402
from dso_cli.scoring import OptionScorer  # noqa: E402
from dso_cli.steering.activations import ActivationStore, usable_items  # noqa: E402
from dso_cli.steering.caa import caa_modules, fit_caa, mean_difference  # noqa: E402

Item = Mapping[str, Any]


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--layer", type=int, default=None, help="decoder layer index (default: the one selected on val)"
    )
    parser.add_argument("--repeats", type=int, default=1, help="timed fits of each; medians are reported")
    parser.add_argument("--batch-size", type=int, default=None, help="rows per forward (default: scoring's)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's current number)")
    parser.add_argument("--warmup-items", type=int, default=32, help="items of the untimed warm-up run of each fit")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args, overrides = parser.parse_known_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return args, overrides


def completion_text(scorer: OptionScorer, item: Item, kind: str) -> str:
    """The prompt as our scorer renders it (chat template, answer prefix) followed by the ``kind`` option.

    The library tokenises with the tokenizer's special tokens; when the rendered text already starts
    with the BOS token (a chat template that writes it), it is dropped so that it is not there twice."""
    text = scorer.render(item) + item["options"][item[f"{kind}_option"]]
    bos = getattr(scorer.tokenizer, "bos_token", None)
    if bos and text.startswith(bos) and scorer.tokenizer("")["input_ids"][:1] == [scorer.tokenizer.bos_token_id]:
        text = text[len(bos) :]
    return text


def contrast_pairs(scorer: OptionScorer, items: Sequence[Item]) -> list[tuple[str, str]]:
    """(positive, negative) = (anti, pro) completions: the library's mean of positive − negative is then
    our ``mean(anti) − mean(pro)`` (both completions of every item, so the pairing changes nothing)."""
    return [(completion_text(scorer, it, "anti"), completion_text(scorer, it, "pro")) for it in usable_items(items)]


def token_mismatches(scorer: OptionScorer, items: Sequence[Item], tokenizer: Any) -> int:
    """Completions whose token ids as the library gets them differ from the ids our scorer runs."""
    mismatches = 0
    for item in usable_items(items):
        encoded = scorer.encode(item)
        for kind in ("pro", "anti"):
            ours = list(encoded.prompt_ids) + list(encoded.option_ids[item[f"{kind}_option"]])
            mismatches += tokenizer(completion_text(scorer, item, kind))["input_ids"] != ours
    return mismatches


def library_tokenizer(tokenizer: Any) -> Any:
    """A right-padded copy (the library also sets a missing pad token on the tokenizer it is given)."""
    out = copy.deepcopy(tokenizer)
    out.padding_side = "right"
    return out


def layer_matcher(model: torch.nn.Module) -> str:
    """The library's ``{num}`` template for the decoder layers our layout registry finds."""
    names = find_decoder_layers(model)
    template = re.sub(r"\d+$", "{num}", names[0])
    if [template.format(num=i) for i in range(len(names))] != names:
        raise SystemExit(f"bench_peers: decoder layers {names[:2]}... are not numbered 0..{len(names) - 1}")
    return template


# --- the two fits ------------------------------------------------------------------------------------
def fit_ours(
    loaded: LoadedModel, scorer: OptionScorer, items: Sequence[Item], layer: int, batch_size: int
) -> tuple[Tensor, float]:
    """``dso train steering_method=caa steering_method.layers=[layer]``: the store's pass and the fit."""
    started = time.perf_counter()
    store = ActivationStore(scorer, items, batch_size=batch_size)
    artifact = fit_caa(loaded, store, CAAOptions(layers=[layer]))
    seconds = time.perf_counter() - started
    (vector,) = artifact.tensors.values()
    return vector.float().cpu(), seconds


def fit_steering_vectors(
    loaded: LoadedModel, scorer: OptionScorer, items: Sequence[Item], layer: int, batch_size: int, tokenizer: Any
) -> tuple[Tensor, float]:
    """``steering_vectors.train_steering_vector`` (mean aggregator) at decoder layer ``layer``."""
    from steering_vectors import train_steering_vector

    started = time.perf_counter()
    pairs = contrast_pairs(scorer, items)
    vector = train_steering_vector(
        loaded.model,
        tokenizer,
        pairs,
        layers=[layer],
        layer_type="decoder_block",
        layer_config={"decoder_block": layer_matcher(loaded.model)},
        read_token_index=-1,
        batch_size=batch_size,
    )
    seconds = time.perf_counter() - started
    return vector.layer_activations[layer].float().cpu(), seconds


def candidate_pass(
    loaded: LoadedModel, scorer: OptionScorer, items: Sequence[Item], batch_size: int
) -> tuple[ActivationStore, list[str], float]:
    """Our default fit's pass: every candidate layer recorded in one run, and their mean differences."""
    started = time.perf_counter()
    store = ActivationStore(scorer, items, batch_size=batch_size)
    names = caa_modules(loaded.model, CAAOptions(), can_select=True)
    recorded = store.outputs(names)
    for name in names:
        mean_difference(recorded["pro"][name], recorded["anti"][name])
    return store, names, time.perf_counter() - started


def compare_vectors(ours: Tensor, theirs: Tensor) -> dict[str, float]:
    ours, theirs = ours.double(), theirs.double()
    norm_ours, norm_theirs = float(ours.norm()), float(theirs.norm())
    return {
        "cosine": float(torch.nn.functional.cosine_similarity(ours, theirs, dim=0)),
        "relative_norm_difference": abs(norm_theirs - norm_ours) / norm_ours,
        "relative_difference": float((theirs - ours).norm()) / norm_ours,
        "ours_norm": norm_ours,
        "steering_vectors_norm": norm_theirs,
    }


def measure(
    cfg: DictConfig,
    *,
    layer: int | None = None,
    repeats: int = 1,
    batch_size: int | None = None,
    warmup_items: int = 32,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Load the model and benchmark of ``cfg``, fit CAA both ways and compare time and vectors."""
    seed_everything(int(cfg.seed))
    setup = ModelSetup.from_config(cfg)
    loaded, scorer = load_scored_model(setup)
    splits = build_benchmark(cfg.bias_benchmark, cfg.model)
    train = usable_items(split_items(splits, "train"))
    val = [it for it in (split_items(splits, "val") if "val" in splits else []) if it["ambiguous"]]
    if not train:
        raise SystemExit("bench_peers: the benchmark has no ambiguous training items with pro and anti options")
    batch_size = batch_size or scorer.batch_size
    n_layers = len(find_decoder_layers(loaded.model))
    tokenizer = library_tokenizer(loaded.tokenizer)

    warm = train[:warmup_items]  # first-call costs are nobody's fit time
    fit_ours(loaded, scorer_for(loaded, setup), warm, 0, batch_size)
    fit_steering_vectors(loaded, scorer, warm, 0, batch_size, tokenizer)

    store, candidates, candidate_seconds = candidate_pass(loaded, scorer_for(loaded, setup), train, batch_size)
    selection_seconds = None
    if layer is None:
        if not val:
            raise SystemExit("bench_peers: no ambiguous val items to select the layer on; pass --layer")
        started = time.perf_counter()
        artifact = fit_caa(loaded, store, val_items=val)  # the recorded candidates: selection on val only
        selection_seconds = time.perf_counter() - started
        layer, source = artifact.manifest["hyperparameters"]["layers"][0], "selected on val"
    else:
        source = "--layer"
    if not -n_layers <= layer < n_layers:
        raise SystemExit(f"bench_peers: --layer {layer} out of range: the model has {n_layers} decoder layers")
    layer %= n_layers
    log(f"bench_peers: {cfg.model.name_or_path} on {cfg.bias_benchmark.name}, {len(train)} pairs, layer {layer} "
        f"({source}), batch size {batch_size}, {torch.get_num_threads()} threads")  # fmt: skip

    # the library runs as shipped (stock kernels) and, where ours uses oneDNN linears, on those too
    kernels = ["stock"] + ([scorer.linear_kernel] if scorer.linear_kernel != "stock" else [])
    contenders = ["ours", *(f"steering_vectors/{k}" for k in kernels)]
    times: dict[str, list[float]] = {who: [] for who in contenders}
    for repeat in range(repeats):
        for who in contenders if repeat % 2 == 0 else contenders[::-1]:
            if who == "ours":
                ours, seconds = fit_ours(loaded, scorer_for(loaded, setup), train, layer, batch_size)
            else:
                with linear_kernel(loaded.model, who.split("/")[1]):
                    theirs, seconds = fit_steering_vectors(loaded, scorer, train, layer, batch_size, tokenizer)
            times[who].append(seconds)
            log(f"bench_peers: {who} fit {repeat + 1}/{repeats}: {seconds:.2f} s")
    medians = {who.removeprefix("steering_vectors/"): statistics.median(runs) for who, runs in times.items()}
    ours_seconds = medians.pop("ours")
    theirs_seconds = min(medians.values())  # the library at its faster kernel
    library_guess = _library_guess(loaded.model)
    trees = scorer.tree_applies([scorer.encode(it) for it in train]) if hasattr(scorer, "tree_applies") else False
    packing = f"prefix trees of {scorer.tree_tokens} tokens" if trees else f"batches of {batch_size} completions"
    return {
        "ours_seconds": ours_seconds,
        "steering_vectors_seconds": theirs_seconds,
        "speedup_vs_steering_vectors": theirs_seconds / ours_seconds,
        **compare_vectors(ours, theirs),
        "n_pairs": len(train),
        "layer": layer,
        "layer_source": source,
        "module": find_decoder_layers(loaded.model)[layer],
        "n_token_mismatches": token_mismatches(scorer, train, tokenizer),
        "ours_candidate_pass_seconds": candidate_seconds,
        "candidate_layers": [find_decoder_layers(loaded.model).index(n) for n in candidates],
        "ours_selection_seconds": selection_seconds,
        "ours_linear_kernel": scorer.linear_kernel,
        "steering_vectors_seconds_by_kernel": medians,
        "runs_seconds": times,
        "steering_vectors_layer_guess": library_guess,
        "steering_vectors_guess_matches": library_guess == layer_matcher(loaded.model),
        "batch_size": batch_size,
        "ours_packing": packing,
        "threads": torch.get_num_threads(),
        "repeats": repeats,
        "device": str(loaded.device),
        "dtype": str(loaded.dtype).removeprefix("torch."),
        "model": cfg.model.name_or_path,
        "benchmark": cfg.bias_benchmark.name,
    }


def _library_guess(model: torch.nn.Module) -> str | None:
    """The decoder-block matcher the library would guess on its own."""
    from steering_vectors import guess_and_enhance_layer_config

    return guess_and_enhance_layer_config(model, None, "decoder_block").get("decoder_block")


def main(argv: list[str]) -> dict[str, Any]:
    args, overrides = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        import steering_vectors  # noqa: F401
    except ImportError as exc:
        raise SystemExit(f"bench_peers: steering-vectors is not importable ({exc}); run `make setup`") from None
    cfg = compose_config("train", overrides, job_name="bench_peers")
    result = measure(
        cfg, layer=args.layer, repeats=args.repeats, batch_size=args.batch_size, warmup_items=args.warmup_items
    )
    theirs = result["steering_vectors_seconds"]
    rows = [
        {"fit": f"dso: ActivationStore + fit_caa, 1 layer ({result['ours_packing']}, "
                f"{result['ours_linear_kernel']} linear)",
         "seconds": result["ours_seconds"], "vs steering-vectors": theirs / result["ours_seconds"],
         "norm": result["ours_norm"]},
        *({"fit": f"steering-vectors 0.12.2: train_steering_vector (batches of {result['batch_size']} pairs, "
                  f"{kernel} linear)", "seconds": seconds, "vs steering-vectors": theirs / seconds,
           "norm": result["steering_vectors_norm"]}
          for kernel, seconds in result["steering_vectors_seconds_by_kernel"].items()),
        {"fit": f"dso: default pass ({len(result['candidate_layers'])} candidate layers, selection excluded)",
         "seconds": result["ours_candidate_pass_seconds"],
         "vs steering-vectors": theirs / result["ours_candidate_pass_seconds"]},
    ]  # fmt: skip
    print(markdown_table(rows, ["fit", "seconds", "vs steering-vectors", "norm"], digits=3))
    print(f"cosine {result['cosine']:.6f}, relative norm difference {result['relative_norm_difference']:.2e}, "
          f"relative difference {result['relative_difference']:.2e}, {result['n_pairs']} pairs, layer "
          f"{result['layer']} ({result['layer_source']}), token mismatches {result['n_token_mismatches']}")  # fmt: skip
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps({**result, "command": " ".join(["python scripts/bench_peers.py", *argv])}))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
