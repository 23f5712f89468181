"""Writes occupation_unambiguous.jsonl, the data of the local lm-eval task dso_occupation_mc
(run: python examples/lm_eval_tasks/make_task_data.py): the unambiguous items of the built-in
occupation benchmark's test split (the question has one right answer), in the decision-item fields."""

import json
from pathlib import Path

from dso_cli.benchmarks.occupation import build

FIELDS = ("id", "prompt", "answer_prefix", "options", "correct", "cluster")

if __name__ == "__main__":
    test = build()["test"]
    rows = [{k: item[k] for k in FIELDS} for item in test if not item["ambiguous"]]
    out = Path(__file__).with_name("occupation_unambiguous.jsonl")
    out.write_text("".join(json.dumps(row) + "\n" for row in rows))
    print(f"wrote {len(rows)} items to {out}")
