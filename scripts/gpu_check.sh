#!/usr/bin/env bash
# GPU smoke check for a CUDA machine without internet (at most 8 minutes): tiny random VLMs of the four
# families (LLaVA, Qwen2.5-VL, Gemma-3, Mllama) and a tiny random Llama are built from configs, then
# `dso train` and `dso sweep` run on them in bf16 on the GPU, and scoring throughput is printed.
# Usage: scripts/gpu_check.sh [OUT_DIR]   (PYTHON=... picks the interpreter; default .venv or python3)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${PYTHON:-}" ]; then py=$PYTHON; elif [ -x .venv/bin/python ]; then py=.venv/bin/python; else py=python3; fi
export HF_HUB_OFFLINE=1 WANDB_MODE=offline PYTHONUNBUFFERED=1
exec timeout 480 "$py" scripts/gpu_check.py "${1:-outputs/gpu_check}"  # DSO_GPU_CHECK_DEVICE=cpu: dry run
