#!/usr/bin/env bash
# Reproduction recipe: what each ingredient of a per-decision fair objective buys and costs.
# Objectives (one run each, embedded default model, occupation benchmark, optimizer.steps=$STEPS, 60
# unless set). The first nine ran before the default became per-decision: they keep that optimizer
# (8 unambiguous items per step at accuracy weight 1, constant learning rate, every norm steered):
#   flip            the paper's stereotype-flip reward (per-occupation gap only; the earlier default)
#   item_gap        per-item |P(pro) - P(anti)|
#   item_kl         per-item KL(uniform || the two people's probabilities)
#   item_kl_order   item_kl + the counterbalanced pairs' order gap (weight 1)
#   item_kl_order_occ  item_kl_order + the paper's per-occupation gap (weight 1)
#   item_kl_order_pair item_kl_order + each counterbalanced pair's gender gap (weight 3)
#   balance         item_kl_order_pair + the batch's lean to the first-listed person (weight 10):
#                   reward=decision_balance as configured
#   unknown         balance with a "can't tell" option on every item (bias.unknown_option=true), reward 0
#   unknown_reward  the same with reward 0.5 for "can't tell"
# The study that chose today's default (16 counterbalanced unambiguous items per step, cosine learning
# rate, the per-occupation gap at weight 3; docs/results/fair-decisions.md, "Reading the evidence"):
#   default         `dso train` as shipped (every norm, accuracy weight 3)
#   acc10           accuracy weight 10
#   half_acc10      the first half of the layers (steering_method.depth=[0,0.5]), accuracy weight 10
#   half_acc30      the same at accuracy weight 30
#   half_flip       the paper's reward (reward=stereotype_flip), first half, accuracy weight 10
#   default_flip    the paper's reward with today's optimizer
# Each run is swept at w in {0, 0.5, 1} on occupation test, heldout_occupations and heldout_templates
# (POB, item_bias, first_option_rate, order_dep, refusal rates, unambiguous accuracy, held-out text KL
# and perplexity) and evaluated on SynthBias test (dso eval). SEEDS="0 1" trains a second seed of each.
# Prints one Markdown table (scripts/fair_decisions_table.py) and writes OUT_DIR/study.csv. Resumable:
# finished steps are skipped. About 25 minutes per run on 2 CPU cores. Needs the SynthBias CSV:
#   scripts/fair_decisions_study.sh /path/to/synthbias_data.csv [OUT_DIR] [OBJECTIVES] [SEEDS]
set -euo pipefail
cd "$(dirname "$0")/.."
csv=$(realpath "${1:?usage: scripts/fair_decisions_study.sh /path/to/synthbias_data.csv [OUT_DIR] [OBJECTIVES] [SEEDS]}")
out=${2:-outputs/fair_decisions}
objectives=${3:-"default acc10 half_acc10 half_acc30 half_flip default_flip flip item_gap item_kl item_kl_order item_kl_order_occ item_kl_order_pair balance unknown unknown_reward"}
seeds=${4:-${SEEDS:-0}}
steps=${STEPS:-60}
make setup >/dev/null
export PATH="$PWD/.venv/bin:$PATH"
grid="alpha=[0,0.5,1]"
earlier=(optimizer.unambiguous_per_batch=8 optimizer.accuracy_weight=1 optimizer.lr_schedule=constant
         "steering_method.depth=[0,1]")
balance_then=(reward=decision_balance reward.occupation_weight=0)  # stereotype_flip has no occupation_weight
none=(reward.order_weight=0 reward.pair_weight=0 reward.position_weight=0 reward.occupation_weight=0)
for objective in $objectives; do
  case $objective in
    default) opt=() ;;
    acc10) opt=(optimizer.accuracy_weight=10) ;;
    half_acc10) opt=("steering_method.depth=[0,0.5]" optimizer.accuracy_weight=10) ;;
    half_acc30) opt=("steering_method.depth=[0,0.5]" optimizer.accuracy_weight=30) ;;
    half_flip) opt=("steering_method.depth=[0,0.5]" optimizer.accuracy_weight=10 reward=stereotype_flip) ;;
    default_flip) opt=(reward=stereotype_flip) ;;
    flip) opt=("${earlier[@]}" reward=stereotype_flip) ;;
    item_gap) opt=("${earlier[@]}" reward=decision_balance reward.item_divergence=gap "${none[@]}") ;;
    item_kl) opt=("${earlier[@]}" reward=decision_balance "${none[@]}") ;;
    item_kl_order) opt=("${earlier[@]}" reward=decision_balance "${none[@]}" reward.order_weight=1) ;;
    item_kl_order_occ) opt=("${earlier[@]}" reward=decision_balance "${none[@]}" reward.order_weight=1 reward.occupation_weight=1) ;;
    item_kl_order_pair) opt=("${earlier[@]}" reward=decision_balance "${none[@]}" reward.order_weight=1 reward.pair_weight=3) ;;
    balance) opt=("${earlier[@]}" "${balance_then[@]}") ;;
    unknown) opt=("${earlier[@]}" "${balance_then[@]}" bias.unknown_option=true) ;;
    unknown_reward) opt=("${earlier[@]}" "${balance_then[@]}" bias.unknown_option=true reward.unknown_reward=0.5) ;;
    *) echo "unknown objective $objective" >&2; exit 2 ;;
  esac
  for seed in $seeds; do
    run="$out/$objective-seed$seed"
    [ -f "$run/artifact/manifest.json" ] || dso train run_dir="$run" seed="$seed" optimizer.steps="$steps" "${opt[@]}"
    if [ ! -f "$run/.swept" ]; then
      dso sweep run_dir="$run" "$grid" "sweep.splits=[test,heldout_occupations,heldout_templates]" && touch "$run/.swept"
    fi
    [ -f "$run/eval.csv" ] || dso eval run_dir="$run" "eval.benchmarks=[synthbias]" "eval.capability=[]" "$grid" \
      bias.path="$csv"
  done
done
python scripts/fair_decisions_table.py "$out"
