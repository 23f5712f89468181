#!/usr/bin/env bash
# Reproduction recipe: DSO trained only at w=1 (strength_mode=fixed, the paper) vs. over the w path
# (strength_mode=path), at the default step size and at a 10x larger one, on the embedded default.
# Each run trains and sweeps w in {0, .25, .5, .75, 1} on the test split; one report compares all.
# About 35 minutes on 2 CPU cores. Usage: scripts/compare_omega_modes.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
make setup >/dev/null
export PATH="$PWD/.venv/bin:$PATH"
out=${1:-outputs/compare_omega_modes}
runs=()
for lr in 1e-3 1e-2; do
  for mode in fixed path; do
    run="$out/${mode}_lr${lr}"
    [ -f "$run/artifact/manifest.json" ] || dso train run_dir="$run" optimizer.strength_mode=$mode optimizer.lr=$lr
    [ -f "$run/sweep.csv" ] || dso sweep run_dir="$run" alpha=0:1:0.25
    runs+=("$run")
  done
done
dso report "runs=[$(IFS=,; echo "${runs[*]}")]" report.out_dir="$out/report"
