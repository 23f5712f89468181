"""``dso generate``: what a run's steered model writes, at a list of strengths, beside what it scores.

Writes ``<run_dir>/generations.jsonl`` (one line per item and strength: ``alpha``, the answer, the
option it names, the scored decision), ``generations.md`` (answers side by side, and the agreement
table) and ``generate_config.yaml``. Items come from a split of the run's benchmark
(``generate.split``) or a prompts file (``generate.prompts``: a ``.txt`` with one prompt per line, or
a decision file in the ``bias=decisions`` schema, whose answers are parsed too).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig

from dso_cli.benchmarks import split_items
from dso_cli.errors import DsoError
from dso_cli.evaluation.generation import GenerationSettings, agreement_summary, generate_at_strengths, side_by_side
from dso_cli.io import write_text
from dso_cli.pipeline.results import markdown_table
from dso_cli.pipeline.runs import parse_strengths, save_provenance
from dso_cli.pipeline.specs import ModelSetup
from dso_cli.pipeline.trained_run import open_trained_run, run_config

GENERATIONS = "generations.jsonl"
SUMMARY_COLUMNS = [
    "alpha", "n_items", "parsed", "agreement", "generated_pob", "scored_pob_hard", "first_named", "scored_first_named",
]  # fmt: skip


def prompt_items(path: Path) -> list[dict]:
    """``generate.prompts``: plain prompts (``.txt``, one per line; no options to parse) or decision
    items (``.jsonl``/``.csv``/``.parquet`` in the ``bias=decisions`` schema)."""
    if not path.is_file():
        raise DsoError(f"generate.prompts={path}: no such file")
    if path.suffix.lower() != ".txt":
        from dso_cli.benchmarks.decisions import read_items, read_rows

        return read_items(read_rows(path), f"generate.prompts={path}", "prompts", path.parent)
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lines:
        raise DsoError(f"generate.prompts={path}: no prompts")
    return [
        {"id": f"prompt/{i}", "benchmark": "prompts", "split": "prompts", "prompt": text, "answer_prefix": "",
         "options": [], "option_groups": [], "pro_option": -1, "anti_option": -1, "correct": -1,
         "ambiguous": False, "cluster": "", "attribute": "", "question_type": "", "pair_id": f"prompt/{i}",
         "images": []}
        for i, text in enumerate(lines, 1)
    ]  # fmt: skip


def spread(items: list[dict], n: int) -> list[dict]:
    """About ``n`` items taken whole pair by whole pair, one cluster after another (a split is ordered by
    cluster, so its first ``n`` items would all be one occupation)."""
    pairs: dict[str, dict[str, list[dict]]] = {}
    for item in items:
        pairs.setdefault(item["cluster"], {}).setdefault(item["pair_id"], []).append(item)
    queues = [list(by_pair.values()) for by_pair in pairs.values()]
    chosen: list[dict] = []
    while len(chosen) < n and any(queues):
        for queue in queues:
            if queue and len(chosen) < n:
                chosen += queue.pop(0)
    return chosen


def settings_of(cfg: DictConfig) -> GenerationSettings:
    g = cfg.generate
    if int(g.max_new_tokens) < 1:
        raise DsoError(f"generate.max_new_tokens={g.max_new_tokens} must be at least 1")
    if float(g.temperature) <= 0 or not 0 < float(g.top_p) <= 1:
        raise DsoError("generate.temperature must be > 0 and generate.top_p in (0, 1]")
    return GenerationSettings(max_new_tokens=int(g.max_new_tokens), do_sample=bool(g.do_sample),
                              temperature=float(g.temperature), top_p=float(g.top_p), seed=int(cfg.seed))  # fmt: skip


def run_generate(cfg: DictConfig, overrides: Sequence[str] = ()) -> Path:
    strengths = parse_strengths(cfg.alpha)
    settings = settings_of(cfg)
    run_dir, cfg = run_config(cfg, overrides)
    prompts = Path(cfg.generate.prompts).expanduser() if cfg.generate.prompts else None
    own = prompt_items(prompts) if prompts is not None else None  # a bad file fails before the model loads
    split = str(cfg.generate.split)
    run = open_trained_run(run_dir, ModelSetup.from_config(cfg), cfg.bias_benchmark, verb="generate",
                           evaluated=[] if own is not None else [split], overrides=overrides)  # fmt: skip
    items = own if own is not None else split_items(run.splits, split)
    if cfg.generate.max_items is not None:
        items = spread(list(items), int(cfg.generate.max_items))
    if not items:
        raise DsoError("dso generate: no items to generate for")
    artifact = run.artifact
    print(f"dso generate: {artifact.method} from {run_dir}, {len(items)} items, strengths {strengths}", flush=True)
    out = run_dir / GENERATIONS
    save_provenance(run_dir, cfg, prefix="generate_")

    def save(records: list[dict]) -> None:  # after every strength: an interruption keeps what is done
        write_text(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))

    records = generate_at_strengths(run.scorer, artifact, items, strengths, settings, on_strength=save)
    summary = agreement_summary(records)
    table = markdown_table(summary, SUMMARY_COLUMNS)
    note = (
        "parsed: answers that name an option; agreement: the named option is the scored decision "
        "(argmax of the option policy); generated_pob / scored_pob_hard: POB of those two decisions "
        "(ambiguous items); first_named / scored_first_named: share of the ambiguous decisions that name the "
        "person listed first (1.0 is a position rule, 0.5 is no preference)."
    )
    write_text(run_dir / "generations.md", f"# dso generate: {artifact.method}, {run_dir.name}\n\n{table}\n\n{note}\n\n"
               f"{side_by_side(records)}\n")  # fmt: skip
    print(table)
    for row in summary:
        print(f"dso generate: agreement of generated and scored decisions at alpha={row['alpha']:g}: "
              f"{row['agreement']:.3f} (parsed {row['parsed']:.3f}); first-named person chosen in "
              f"{row['first_named']:.3f} of generated and {row['scored_first_named']:.3f} of scored "
              "ambiguous decisions")  # fmt: skip
    print(f"dso generate: wrote {out} and {run_dir / 'generations.md'}", flush=True)
    return run_dir
