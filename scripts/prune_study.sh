#!/usr/bin/env bash
# Reproduction recipe for the sparsity study (the DSO paper's Fig. 5 as a table): DSO trained on the
# embedded default without and with an L1 penalty on (a, b), then pruned to the top fraction
# keep in {0.1, ..., 1.0} of its neurons by |a|+|b| and re-evaluated at w = 1 on the test split.
# About 25 minutes on 2 CPU cores. Usage: scripts/prune_study.sh [OUT_DIR] [L1 ...]
set -euo pipefail
cd "$(dirname "$0")/.."
make setup >/dev/null
export PATH="$PWD/.venv/bin:$PATH"
out=${1:-outputs/prune_study}
shift || true
l1s=("0" "${@:-1e-2}")
runs=()
for l1 in "${l1s[@]}"; do
  run="$out/l1_${l1}"
  [ -f "$run/artifact/manifest.json" ] || dso train run_dir="$run" optimizer.l1="$l1"
  [ -f "$run/prune.csv" ] || dso prune run_dir="$run" keep=0.1:1:0.1
  runs+=("$run")
done
python scripts/prune_table.py "${runs[@]}"
