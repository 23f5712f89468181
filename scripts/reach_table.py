"""Collect the reach study's runs (scripts/reach_study.sh) into three tables: ``reach.csv`` (one row per run,
split and strength, with the association columns), ``reach_families.csv`` (the decision metrics per
answer-format family, with ``p_pro``, the mean probability of the stereotyped person on ambiguous items)
and ``reach_summary.csv`` (one row per run: each acceptance quantity at ω = 1, as a ratio to ω = 0 where
the bound is one).

    python scripts/reach_table.py OUT_DIR ROW [ROW ...]
"""

from __future__ import annotations

import sys
from functools import partial
from pathlib import Path

import pandas as pd
import yaml

COLUMNS = ["pob", "pob_se", "item_bias", "item_bias_se", "first_option_rate", "order_dep", "unamb_acc",
           "unamb_acc_first", "unamb_acc_second", "assoc_gap", "assoc_gap_se", "assoc_r", "assoc_r_se",
           "pronoun_control_acc", "text_kl", "text_ppl"]  # fmt: skip


def collect(out: Path, rows: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    runs, families = [], []
    for row in rows:
        for run in sorted(out.glob(f"{row}-s*")):
            if not (run / "sweep_formats.csv").is_file():
                print(f"skipped {run}: not swept yet", file=sys.stderr)
                continue
            seed = int(run.name.rsplit("-s", 1)[1])
            sweep = pd.read_csv(run / "sweep.csv")
            held = " ".join(
                sorted(yaml.safe_load((run / "config.yaml").read_text())["bias_benchmark"]["heldout_formats"])
            )
            sweep = sweep.assign(objective=row, seed=seed, heldout_families=held)
            runs.append(sweep[["objective", "seed", "heldout_families", "split", "alpha", *COLUMNS]])
            per = pd.read_csv(run / "sweep_formats.csv")
            per = per.assign(objective=row, seed=seed, p_pro=(per["stereotype_gap"] + 1) / 2)
            families.append(per[["objective", "seed", "split", "alpha", "answer_format", "pob", "item_bias",
                                 "first_option_rate", "order_dep", "unamb_acc", "p_pro", "n_ambiguous"]])  # fmt: skip
    return pd.concat(runs, ignore_index=True), pd.concat(families, ignore_index=True)


def _ratio(at: dict, split: str, column: str) -> float:
    return getattr(at[(split, 1.0)], column) / getattr(at[(split, 0.0)], column)


def summarise(table: pd.DataFrame) -> pd.DataFrame:
    """Per run: the held-out families (``heldout_templates``), test and held-out occupations at ω = 1
    against ω = 0 (``_x``: the ratio), in the acceptance check's terms."""
    rows = []
    for (objective, seed), run in table.groupby(["objective", "seed"], sort=False):
        at = {(r.split, r.alpha): r for r in run.itertuples()}
        ratio = partial(_ratio, at)

        ht, t, ho = (at[(s, 1.0)] for s in ("heldout_templates", "test", "heldout_occupations"))
        rows.append({
            "objective": objective, "seed": seed,
            "heldout_families": run["heldout_families"].iloc[0],
            "ht_pob_x": ratio("heldout_templates", "pob"), "ht_item_bias_x": ratio("heldout_templates", "item_bias"),
            "ht_order_dep_0": at[("heldout_templates", 0.0)].order_dep, "ht_order_dep": ht.order_dep,
            "test_pob_x": ratio("test", "pob"), "test_item_bias_x": ratio("test", "item_bias"),
            "test_first": t.first_option_rate, "test_acc": t.unamb_acc,
            "ho_pob_x": ratio("heldout_occupations", "pob"),
            "ho_assoc_gap_x": ratio("heldout_occupations", "assoc_gap"),
            "ho_assoc_r_x": ratio("heldout_occupations", "assoc_r"),
            "ho_control": ho.pronoun_control_acc, "text_kl": t.text_kl, "text_ppl_x": ratio("test", "text_ppl"),
        })  # fmt: skip
    return pd.DataFrame(rows)


def main(argv: list[str]) -> None:
    out, rows = Path(argv[0]), argv[1:]
    table, families = collect(out, rows)
    table.to_csv(out / "reach.csv", index=False)
    families.to_csv(out / "reach_families.csv", index=False)
    summary = summarise(table)
    summary.to_csv(out / "reach_summary.csv", index=False)
    print(summary.to_markdown(index=False, floatfmt=".3f"))
    show = ["objective", "seed", "split", "alpha", "pob", "item_bias", "first_option_rate", "order_dep", "unamb_acc",
            "assoc_gap", "assoc_r", "pronoun_control_acc", "text_kl"]  # fmt: skip
    print(table[show].to_markdown(index=False, floatfmt=".3f"))
    print(f"wrote {out / 'reach.csv'}, {out / 'reach_families.csv'} and {out / 'reach_summary.csv'}")


if __name__ == "__main__":
    main(sys.argv[1:])
