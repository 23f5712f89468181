"""Markdown transfer tables from the ``eval.csv`` of one or more runs (see ``scripts/transfer.sh``).

One table per run: each evaluated benchmark at ω = 0 (the base model) and at the largest ω, with
standard errors. Usage: ``python scripts/transfer_table.py RUN_DIR [RUN_DIR ...]``.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf


def cell(value: float, se: float | None = None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if se is None or (isinstance(se, float) and math.isnan(se)):
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} ± {se:.{digits}f}"


def table(run_dir: Path) -> str:
    frame = pd.read_csv(run_dir / "eval.csv")
    trained_on = OmegaConf.load(run_dir / "config.yaml").bias_benchmark.name
    strengths = sorted(frame["alpha"].unique())
    lines = [
        f"DSO trained on **{trained_on}**; each cell is ω = 0 (base) → "
        + " → ".join(f"ω = {a:g}" for a in strengths[1:]),
        "",
        "| benchmark | POB ↓ | stereotype gap ↓ | unamb. / capability acc ↑ | pro − anti acc "
        "| BBQ s_DIS / s_AMB | KL to base | ppl |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for bench, rows in frame.groupby("benchmark", sort=False):
        rows = rows.set_index("alpha").sort_index()

        def path(col: str, se_col: str | None = None, rows=rows) -> str:
            if rows[col].isna().all():
                return "–"
            return " → ".join(cell(rows.at[a, col], rows.at[a, se_col] if se_col else None) for a in strengths)

        capability = bench.startswith("mmlu")
        acc_col, acc_se = ("capability_acc", "capability_acc_se") if capability else ("unamb_acc", "unamb_acc_se")
        bbq = " → ".join(f"{cell(rows.at[a, 's_dis'])} / {cell(rows.at[a, 's_amb'])}" for a in strengths)
        lines.append(
            f"| {bench} | {path('pob', 'pob_se')} | {path('stereotype_gap')} | {path(acc_col, acc_se)} | "
            f"{path('acc_pro_anti_gap')} | {bbq if bench == 'bbq' else '–'} | {path('kl', 'kl_se')} | {path('ppl')} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print(table(Path(arg)))
        print()
