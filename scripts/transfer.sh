#!/usr/bin/env bash
# Reproduction recipe: does DSO transfer across benchmarks? Train on `occupation` and on `synthbias`
# (embedded default model), then `dso eval` each run on all four bias benchmarks and both capability
# sets at w in {0, 0.5, 1}; prints one Markdown table per training benchmark.
# About 30 minutes on 2 CPU cores. Needs the SynthBias CSV (its licence keeps it out of this repository):
#   scripts/transfer.sh /path/to/synthbias_data.csv [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
csv=$(realpath "${1:?usage: scripts/transfer.sh /path/to/synthbias_data.csv [OUT_DIR]}")
out=${2:-outputs/transfer}
make setup >/dev/null
export PATH="$PWD/.venv/bin:$PATH"
for bench in occupation synthbias; do
  run="$out/$bench"
  data=(); [ "$bench" = synthbias ] && data=(bias.path="$csv")
  [ -f "$run/artifact/manifest.json" ] || dso train run_dir="$run" bias=$bench "${data[@]}"
  [ -f "$run/eval.csv" ] || dso eval run_dir="$run" "eval.benchmarks=[occupation,synthbias,winobias,bbq]" \
    "eval.capability=[mmlu_dev,neutral_text]" "alpha=[0,0.5,1]" bias.path="$csv"
done
python scripts/transfer_table.py "$out/occupation" "$out/synthbias"
