"""One table from scripts/generalization_study.sh: per objective, training benchmark and strength, the
POB (± bootstrap SE) on every evaluated split and benchmark, unambiguous accuracy, and the held-out
neutral-text KL and perplexity. Usage: python scripts/generalization_table.py OUT_DIR"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from dso_cli.pipeline.results import markdown_table

COLUMNS = {  # column -> (file, benchmark, split)
    "occ_test": ("sweep.csv", "occupation", "test"),
    "heldout_occ": ("sweep.csv", "occupation", "heldout_occupations"),
    "heldout_tpl": ("sweep.csv", "occupation", "heldout_templates"),
    "occ_eval": ("eval.csv", "occupation", "test"),
    "synthbias": ("eval.csv", "synthbias", "test"),
    "winobias": ("eval.csv", "winobias", "test"),
}


def cell(frame: pd.DataFrame, strength: float, column: str = "pob") -> str:
    row = frame[frame["alpha"] == strength]
    if row.empty or pd.isna(row[column].iloc[0]):
        return ""
    value = float(row[column].iloc[0])
    se = row.get(f"{column}_se")
    return f"{value:.3f}" + (f" ± {float(se.iloc[0]):.3f}" if se is not None and pd.notna(se.iloc[0]) else "")


def table(out: Path) -> pd.DataFrame:
    rows = []
    for run in sorted(p for p in out.iterdir() if (p / "artifact").is_dir()):
        objective, trained_on = run.name.split("-", 1)
        frames = {}
        for name, (file, bench, split) in COLUMNS.items():
            path = run / file
            if path.is_file():
                data = pd.read_csv(path)
                frames[name] = data[(data["benchmark"] == bench) & (data["split"] == split)]
        evals = pd.read_csv(run / "eval.csv") if (run / "eval.csv").is_file() else pd.DataFrame(columns=["benchmark"])
        text = evals[evals["benchmark"] == "neutral_text"]
        own = frames.get("occ_test") if frames.get("occ_test") is not None and len(frames["occ_test"]) else None
        strengths = sorted(set(text["alpha"])) if len(text) else sorted(set(own["alpha"]) if own is not None else [])
        base_ppl = float(text[text["alpha"] == 0]["ppl"].iloc[0]) if len(text) else float("nan")
        for strength in strengths:
            row = {"objective": objective, "trained_on": trained_on, "alpha": strength}
            for name, frame in frames.items():
                if len(frame):
                    row[f"{name}_pob"] = cell(frame, strength)
            has_test = "occ_test" in frames and len(frames["occ_test"])
            accuracy = frames["occ_test"] if has_test else frames.get("occ_eval")
            if accuracy is not None and len(accuracy):
                row["occ_unamb_acc"] = cell(accuracy, strength, "unamb_acc")
            if "winobias" in frames and len(frames["winobias"]):
                row["winobias_acc"] = cell(frames["winobias"], strength, "unamb_acc")
            if len(text):
                at = text[text["alpha"] == strength]
                row["text_kl"] = f"{float(at['kl'].iloc[0]):.4f} ± {float(at['kl_se'].iloc[0]):.4f}"
                row["text_ppl_ratio"] = f"{float(at['ppl'].iloc[0]) / base_ppl:.3f}"
            rows.append(row)
    return pd.DataFrame(rows)


if __name__ == "__main__":
    out = Path(sys.argv[1])
    frame = table(out)
    frame.to_csv(out / "study.csv", index=False)
    print(markdown_table(frame.fillna("").to_dict("records"), list(frame.columns)))
