"""One Markdown table from the ``prune.csv`` of several runs (see ``scripts/prune_study.sh``).

Rows are the kept fractions (0 = the base model), columns per run the share of |a|+|b| mass kept,
POB ± SE and unambiguous accuracy ± SE. Usage: ``python scripts/prune_table.py RUN_DIR [RUN_DIR ...]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf


def label(run_dir: Path) -> str:
    l1 = OmegaConf.load(run_dir / "config.yaml").optimizer.l1
    return f"λ = {l1:g}"


def by_keep(frame: pd.DataFrame, split: str) -> pd.DataFrame:
    return frame[frame["split"] == split].set_index("keep")


def main(run_dirs: list[Path], split: str = "test") -> str:
    frames = {label(r): by_keep(pd.read_csv(r / "prune.csv"), split) for r in run_dirs}
    keeps = sorted(set().union(*(f.index for f in frames.values())))
    header = ["keep"] + [f"{name}: {col}" for name in frames for col in ("mass", "POB", "acc")]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for keep in keeps:
        cells = ["0 (base)" if keep == 0 else f"{keep:g}"]
        for frame in frames.values():
            if keep not in frame.index:
                cells += ["–"] * 3
                continue
            row = frame.loc[keep]
            cells += [f"{row.mass_kept:.2f}", f"{row.pob:.3f} ± {row.pob_se:.3f}",
                      f"{row.unamb_acc:.3f} ± {row.unamb_acc_se:.3f}"]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(main([Path(p) for p in sys.argv[1:]]))
