#!/usr/bin/env bash
# Reproduction recipe of docs/results/reach.md: does fairness reach prompts the transform was not trained on?
# Every row trains on the embedded default model (occupation benchmark, gender) and is swept at w in {0, 1}
# on test, heldout_occupations and heldout_templates (the held-out answer-format families), with the
# decision metrics per family in sweep_formats.csv and the pronoun association (assoc_gap, assoc_r,
# pronoun_control_acc) beside them. Rows:
#   default        `dso train bias.heldout_formats=[letters,answer_is]` (the acceptance run: every other family;
#                  each training scenario asked in two families, bias.format_twins=2, their disagreement
#                  penalised, reward.format_weight=3; and the pronoun association of the training
#                  occupations pulled to 50/50, optimizer.association_weight=5)
#   no_association the default without the association term (optimizer.association_weight=0)
#   decisions_only without the association and without the consistency term (bias.format_twins=1
#                  reward.format_weight=0): the per-decision terms alone
#   association_sq the association term as (P(she) - .5)^2 at weight 10 instead of KL(uniform || pi) at 5
#   association_strong  the association term at weight 20
#   lofo_<family>  the default with <family> held out instead (e.g. lofo_yes_no, lofo_json)
#   first_half / second_half  the default steering only the first / the second half of the layers
#                  (steering_method.depth=[0,0.5] / [0.5,1]; the default steers every norm)
#   projection     the occupation-gender direction of pronoun contexts removed at the middle layer
#   leace_association  LEACE fitted on those contexts, middle layer
#   projection_many / leace_association_many  the same at every third layer from 6 to 27
# Resumable (finished runs are skipped). About 12 minutes per trained row on 2 CPU cores.
#   scripts/reach_study.sh [OUT_DIR] [ROWS] [SEED]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-outputs/reach}
rows=${2:-"default no_association decisions_only projection leace_association"}
seed=${3:-0}
make setup >/dev/null
export PATH="$PWD/.venv/bin:$PATH"
heldout="bias.heldout_formats=[letters,answer_is]"
for row in $rows; do
  case $row in
    default) args=("$heldout") ;;
    no_association) args=("$heldout" optimizer.association_weight=0) ;;
    decisions_only) args=("$heldout" bias.format_twins=1 reward.format_weight=0 optimizer.association_weight=0) ;;
    association_sq) args=("$heldout" optimizer.association_weight=10 optimizer.association_divergence=square) ;;
    association_strong) args=("$heldout" optimizer.association_weight=20) ;;
    lofo_*) args=("bias.heldout_formats=[${row#lofo_}]") ;;
    first_half) args=("$heldout" "steering_method.depth=[0,0.5]") ;;
    second_half) args=("$heldout" "steering_method.depth=[0.5,1]") ;;
    projection | leace_association) args=("$heldout" "steering_method=$row") ;;
    projection_many | leace_association_many)
      args=("$heldout" "steering_method=${row%_many}" "steering_method.layers=[6,9,12,15,18,21,24,27]") ;;
    *) echo "unknown row $row" >&2; exit 2 ;;
  esac
  run="$out/$row-s$seed"
  [ -f "$run/artifact/manifest.json" ] || dso train "${args[@]}" seed="$seed" run_dir="$run" resume=auto
  [ -f "$run/sweep_formats.csv" ] || dso sweep run_dir="$run" "alpha=[0,1]" \
    "sweep.splits=[test,heldout_occupations,heldout_templates]"
done
python scripts/reach_table.py "$out" $rows
