#!/usr/bin/env bash
# GPU check: trains the base model with training/trainer.py on one NVIDIA GPU in bf16 for a fixed
# number of steps and prints useful tokens/s and the fraction of the GPU's bf16 matmul peak
# (measured in the same run). No network; PyTorch with CUDA must be installed, plus transformers,
# peft, pandas and numpy (carry peft as a wheel where it is missing). Under 8 minutes, enforced.
#
#   bash bench/gpu_check.sh                       # prepared base model + generated sample logs
#   bash bench/gpu_check.sh --random-from DIR --logs DIR   # no model/chitchat-dataset on the machine
#   PYTHON=/opt/venv/bin/python bash bench/gpu_check.sh --steps 50 --micro-batches 4
# Options: python bench/gpu_check.py --help. Record figures in bench/RESULTS.md, "GPU check".
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false \
  HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MLFLOW_TRACKING_URI=
exec timeout --signal=INT --kill-after=10 470 "$PY" bench/gpu_check.py "$@"
