#!/usr/bin/env bash
# The GPU check of issue 9, as one command on a CUDA machine with the venv active (or PYTHON set):
# minutes per epoch of fine-tuning MiniLM on MELD (bfloat16/float16 autocast), and float16 extraction
# throughput in utterances/s (goal: 10,000/s for MiniLM on an H100). Writes bench/out/finetune_speed_cuda.json.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" bench/finetune_speed.py --device cuda "$@"
