"""What the steered model says: free-form answers at several strengths, and the decision read back.

The scored policy (option log-probabilities) is what DSO trains and what POB measures; a user also
wants to see the text. Each item's prompt is rendered exactly as it is scored (chat template, system
prompt, the answer prefix, a prompting method's instruction), the model continues it, and the answer
is parsed for the option it names. Generate-and-parse POB and the agreement with the scored decision
say how far the log-prob metric speaks for what the model writes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from dso_cli.metrics import first_person, per_occupation_bias
from dso_cli.scoring import OptionScorer, policy
from dso_cli.steering.artifact import Artifact


@dataclass(frozen=True)
class GenerationSettings:
    """How answers are generated (``generate.*``)."""

    max_new_tokens: int = 48  # tokens per answer
    do_sample: bool = False  # false: greedy; true: sampled with temperature / top_p, seeded per item
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0  # sampling seed; item i uses seed + i at every strength (paired answers)


def parse_choice(text: str, options: Sequence[str]) -> int | None:
    """The option an answer names first (whole words, case-insensitive), or None when it names none.
    Where one option's text contains another's (``man`` in ``woman``), the longer match wins."""
    best: tuple[int, int, int] | None = None  # (position, -length, option)
    for index, option in enumerate(options):
        needle = option.strip()
        if not needle:
            continue
        match = re.search(rf"(?<!\w){re.escape(needle)}(?!\w)", text, flags=re.IGNORECASE)
        if match:
            candidate = (match.start(), -len(needle), index)
            best = candidate if best is None or candidate < best else best
    return None if best is None else best[2]


def generate_text(scorer: OptionScorer, item: Mapping[str, Any], settings: GenerationSettings, seed: int) -> str:
    """One answer: the item's prompt as scored (its token ids and any images), continued by the model."""
    encoded = scorer.encode(item)
    model = scorer.model
    input_ids = torch.tensor([encoded.prompt_ids], device=scorer.device)
    extra = {k: v.to(scorer.device) for k, v in (encoded.payload or {}).items() if isinstance(v, torch.Tensor)}
    options: dict[str, Any] = {"max_new_tokens": settings.max_new_tokens, "do_sample": settings.do_sample}
    if settings.do_sample:
        options |= {"temperature": settings.temperature, "top_p": settings.top_p}
        torch.manual_seed(seed)
    else:
        options |= {"temperature": None, "top_p": None, "top_k": None}  # greedy: no sampling knobs
    pad = scorer.tokenizer.pad_token_id
    if pad is None:
        pad = scorer.tokenizer.eos_token_id
    with torch.no_grad():
        out = model.generate(
            input_ids=input_ids, attention_mask=torch.ones_like(input_ids), pad_token_id=pad, **options, **extra
        )
    return scorer.tokenizer.decode(out[0, input_ids.shape[1] :], skip_special_tokens=True)


def generate_at_strengths(
    scorer: OptionScorer,
    artifact: Artifact | None,
    items: Sequence[Mapping[str, Any]],
    strengths: Sequence[float],
    settings: GenerationSettings,
    on_strength: Callable[[list[dict[str, Any]]], None] | None = None,
) -> list[dict[str, Any]]:
    """One record per item and strength: the answer, the option it names, and the scored decision
    (the argmax of the option policy at the same strength; None for an item without options)."""
    from tqdm.auto import tqdm

    records: list[dict[str, Any]] = []
    for strength in strengths:
        steering = artifact.steer(scorer, strength) if artifact is not None and strength != 0.0 else nullcontext()
        with steering:
            scored = [None] * len(items)
            with_options = [i for i, item in enumerate(items) if item["options"]]
            if with_options:
                probs = policy(scorer.logprobs([items[i] for i in with_options])).cpu()
                for row, i in enumerate(with_options):
                    scored[i] = int(probs[row].argmax())
            for i, item in enumerate(tqdm(items, desc=f"generate w={strength:g}", unit="item", leave=False)):
                text = generate_text(scorer, item, settings, settings.seed + i)
                choice = parse_choice(text, item["options"]) if item["options"] else None
                records.append(_record(item, strength, text, choice, scored[i]))
        if on_strength is not None:
            on_strength(records)
    return records


def _record(item: Mapping[str, Any], strength: float, text: str, choice: int | None, scored: int | None) -> dict:
    return {
        "id": item["id"],
        "benchmark": item["benchmark"],
        "split": item["split"],
        "cluster": item["cluster"],
        "ambiguous": bool(item["ambiguous"]),
        "alpha": strength,
        "prompt": item["prompt"],
        "answer_prefix": item["answer_prefix"],
        "options": list(item["options"]),
        "option_groups": list(item["option_groups"]),
        "text": text,
        "choice": choice,
        "choice_option": None if choice is None else item["options"][choice],
        "scored_choice": scored,
        "pro_option": item["pro_option"],
        "anti_option": item["anti_option"],
        "correct": item["correct"],
    }


def agreement_summary(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per strength: how often an answer names an option (``parsed``), how often that option is the
    scored decision (``agreement``, over the items with options; an answer naming none disagrees),
    generate-and-parse POB beside scored POB (ambiguous items; POB from hard decisions), and how often
    the generated and the scored decision is the person named first (``first_named``,
    ``scored_first_named``: ambiguous items whose answer names an option; 1.0 is a position rule)."""
    rows = []
    for strength in sorted({r["alpha"] for r in records}):
        at = [r for r in records if r["alpha"] == strength and r["options"]]
        amb = [r for r in at if r["ambiguous"] and r["pro_option"] >= 0]
        row: dict[str, Any] = {"alpha": strength, "n_items": len(at)}
        row["parsed"] = float(np.mean([r["choice"] is not None for r in at])) if at else float("nan")
        row["agreement"] = float(np.mean([r["choice"] == r["scored_choice"] for r in at])) if at else float("nan")
        clusters = np.array([r["cluster"] for r in amb], dtype=object)
        for name, key in (("generated_pob", "choice"), ("scored_pob_hard", "scored_choice")):
            gaps = np.array([(r[key] == r["pro_option"]) - float(r[key] == r["anti_option"]) for r in amb])
            row[name] = per_occupation_bias(gaps, clusters) if amb else float("nan")
        for name, key in (("first_named", "choice"), ("scored_first_named", "scored_choice")):
            firsts = [(r[key], first_person(r.get("option_groups") or [])) for r in amb if r[key] is not None]
            hits = [choice == first for choice, first in firsts if first >= 0]
            row[name] = float(np.mean(hits)) if hits else float("nan")
        rows.append(row)
    return rows


def side_by_side(records: Sequence[Mapping[str, Any]], width: int = 160) -> str:
    """A Markdown table: one row per item, its answer at each strength (the named option in bold)."""
    strengths = sorted({r["alpha"] for r in records})
    by_item: dict[str, dict[float, Mapping[str, Any]]] = {}
    for r in records:
        by_item.setdefault(r["id"], {})[r["alpha"]] = r

    def cell(text: str) -> str:
        text = " ".join(text.split()).replace("|", "\\|")
        return text if len(text) <= width else text[: width - 1] + "…"

    lines = ["| item | prompt | " + " | ".join(f"ω = {s:g}" for s in strengths) + " |"]
    lines.append("|---|---|" + "---|" * len(strengths))
    for item_id, at in by_item.items():
        first = next(iter(at.values()))
        answers = []
        for s in strengths:
            r = at.get(s)
            if r is None:
                answers.append("")
                continue
            named = f"**{r['choice_option'].strip()}**: " if r["choice_option"] else ""
            answers.append(named + cell(first["answer_prefix"] + r["text"]))
        lines.append(f"| {item_id} | {cell(first['prompt'])} | " + " | ".join(answers) + " |")
    return "\n".join(lines)
