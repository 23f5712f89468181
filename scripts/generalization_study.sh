#!/usr/bin/env bash
# Reproduction recipe: what each ingredient of DSO's default objective buys outside its own prompts.
# Objectives (rows): `paper` (the earlier default: KL on the unambiguous items' two options only) and
# `default` (today's conf/optimizer/adam.yaml: full-vocabulary KL on neutral training text and the
# benchmark's prompts, early stopping on val POB within the KL budget), each trained on occupation, on
# SynthBias and on their mixture (embedded default model). Every run is evaluated at w in
# {0, 0.25, 0.5, 1} on occupation test, heldout_occupations and heldout_templates (dso sweep: POB,
# unambiguous accuracy, held-out neutral-text KL and perplexity) and on SynthBias and WinoBias test
# (dso eval). Prints one Markdown table and writes OUT_DIR/study.csv. Resumable: finished steps are
# skipped. About 90 minutes on 2 CPU cores. Needs the SynthBias CSV (its licence keeps it out of this
# repository):   scripts/generalization_study.sh /path/to/synthbias_data.csv [OUT_DIR] [OBJECTIVES] [TRAINED_ON]
set -euo pipefail
cd "$(dirname "$0")/.."
csv=$(realpath "${1:?usage: scripts/generalization_study.sh /path/to/synthbias_data.csv [OUT_DIR]}")
out=${2:-outputs/generalization}
objectives=${3:-"paper default"}
trained_on=${4:-"occupation synthbias mixture"}
make setup >/dev/null
export PATH="$PWD/.venv/bin:$PATH"
grid="alpha=[0,0.25,0.5,1]"
for objective in $objectives; do
  opt=()
  [ "$objective" = paper ] && opt=(optimizer.kl_coef=1 optimizer.kl_text_passages=0 optimizer.kl_prompt_items=0
                                   optimizer.kl_text_coef=null optimizer.eval_every=0)
  for bench in $trained_on; do
    run="$out/$objective-$bench"
    data=(); [ "$bench" != occupation ] && data=(bias.path="$csv")
    members=(); [ "$bench" = mixture ] && members=("bias.benchmarks=[occupation,synthbias]")
    [ -f "$run/artifact/manifest.json" ] || dso train run_dir="$run" bias=$bench "${members[@]}" "${data[@]}" "${opt[@]}"
    if [ "$bench" != synthbias ] && [ ! -f "$run/.swept" ]; then
      dso sweep run_dir="$run" "$grid" "sweep.splits=[test,heldout_occupations,heldout_templates]" && touch "$run/.swept"
    fi
    evaluated="synthbias,winobias"; [ "$bench" = synthbias ] && evaluated="occupation,synthbias,winobias"
    [ -f "$run/eval.csv" ] || dso eval run_dir="$run" "eval.benchmarks=[$evaluated]" \
      "eval.capability=[neutral_text]" "$grid" bias.path="$csv"
  done
done
python scripts/generalization_table.py "$out"
