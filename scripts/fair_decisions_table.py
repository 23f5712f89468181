"""One table from scripts/fair_decisions_study.sh: per objective, seed and strength, POB, item_bias (±
bootstrap SE), first_option_rate and order_dep on occupation test, heldout_occupations,
heldout_templates and SynthBias test, unambiguous accuracy, refusal rates, and the held-out neutral-text
KL and perplexity ratio. Usage: python scripts/fair_decisions_table.py OUT_DIR"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from dso_cli.pipeline.results import markdown_table

SETS = {  # short name -> (file, benchmark, split)
    "test": ("sweep.csv", "occupation", "test"),
    "h_occ": ("sweep.csv", "occupation", "heldout_occupations"),
    "h_tpl": ("sweep.csv", "occupation", "heldout_templates"),
    "synthbias": ("eval.csv", "synthbias", "test"),
}
METRICS = ("pob", "item_bias", "first_option_rate", "order_dep")


def value(frame: pd.DataFrame, strength: float, column: str, se: bool = True) -> str:
    row = frame[frame["alpha"] == strength]
    if row.empty or column not in row or pd.isna(row[column].iloc[0]):
        return ""
    out = f"{float(row[column].iloc[0]):.3f}"
    if se and f"{column}_se" in row and pd.notna(row[f"{column}_se"].iloc[0]):
        out += f" ± {float(row[f'{column}_se'].iloc[0]):.3f}"
    return out


def table(out: Path) -> pd.DataFrame:
    rows = []
    for run in sorted(p for p in out.iterdir() if (p / "artifact").is_dir()):
        objective, seed = run.name.rsplit("-", 1)
        frames = {}
        for name, (file, bench, split) in SETS.items():
            if (run / file).is_file():
                data = pd.read_csv(run / file)
                frames[name] = data[(data["benchmark"] == bench) & (data["split"] == split)]
        test = frames.get("test")
        if test is None or test.empty:
            continue
        base_ppl = float(test[test["alpha"] == 0]["text_ppl"].iloc[0])
        for strength in sorted(set(test["alpha"])):
            row = {"objective": objective, "seed": seed.removeprefix("seed"), "alpha": strength}
            for name, frame in frames.items():
                for metric in METRICS:
                    row[f"{name}_{metric}"] = value(frame, strength, metric, se=metric in ("pob", "item_bias"))
            row["unamb_acc"] = value(test, strength, "unamb_acc")
            row["tpl_unamb_acc"] = value(frames.get("h_tpl", test.iloc[:0]), strength, "unamb_acc", se=False)
            row["refusal"] = value(test, strength, "refusal_rate", se=False)
            row["refusal_unamb"] = value(test, strength, "refusal_rate_unamb", se=False)
            at = test[test["alpha"] == strength]
            row["text_kl"] = f"{float(at['text_kl'].iloc[0]):.4f}"
            row["ppl_ratio"] = f"{float(at['text_ppl'].iloc[0]) / base_ppl:.3f}"
            rows.append(row)
    return pd.DataFrame(rows)


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "outputs/fair_decisions")
    frame = table(out)
    frame.to_csv(out / "study.csv", index=False)
    print(markdown_table(frame.to_dict("records"), list(frame.columns)))


if __name__ == "__main__":
    main()
