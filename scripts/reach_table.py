"""Collect the reach study's runs (scripts/reach_study.sh) into two tables: ``reach.csv`` (one row per run,
split and strength, with the association columns) and ``reach_families.csv`` (the decision metrics per
answer-format family, with ``p_pro``, the mean probability of the stereotyped person on ambiguous items).

    python scripts/reach_table.py OUT_DIR ROW [ROW ...]
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

COLUMNS = ["pob", "pob_se", "item_bias", "item_bias_se", "first_option_rate", "order_dep", "unamb_acc",
           "unamb_acc_first", "unamb_acc_second", "assoc_gap", "assoc_gap_se", "assoc_r", "assoc_r_se",
           "pronoun_control_acc", "text_kl", "text_ppl"]  # fmt: skip


def collect(out: Path, rows: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    runs, families = [], []
    for row in rows:
        for run in sorted(out.glob(f"{row}-s*")):
            seed = int(run.name.rsplit("-s", 1)[1])
            sweep = pd.read_csv(run / "sweep.csv")
            runs.append(sweep.assign(objective=row, seed=seed)[["objective", "seed", "split", "alpha", *COLUMNS]])
            per = pd.read_csv(run / "sweep_formats.csv")
            per = per.assign(objective=row, seed=seed, p_pro=(per["stereotype_gap"] + 1) / 2)
            families.append(per[["objective", "seed", "split", "alpha", "answer_format", "pob", "item_bias",
                                 "first_option_rate", "order_dep", "unamb_acc", "p_pro", "n_ambiguous"]])  # fmt: skip
    return pd.concat(runs, ignore_index=True), pd.concat(families, ignore_index=True)


def main(argv: list[str]) -> None:
    out, rows = Path(argv[0]), argv[1:]
    table, families = collect(out, rows)
    table.to_csv(out / "reach.csv", index=False)
    families.to_csv(out / "reach_families.csv", index=False)
    show = ["objective", "seed", "split", "alpha", "pob", "item_bias", "first_option_rate", "order_dep", "unamb_acc",
            "assoc_gap", "assoc_r", "pronoun_control_acc", "text_kl"]  # fmt: skip
    print(table[show].to_markdown(index=False, floatfmt=".3f"))
    print(f"wrote {out / 'reach.csv'} and {out / 'reach_families.csv'}")


if __name__ == "__main__":
    main(sys.argv[1:])
