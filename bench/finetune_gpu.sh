#!/usr/bin/env bash
# The GPU check of issues 9 and 16, as one command on a CUDA machine with the venv active (or PYTHON set):
# minutes per epoch of fine-tuning MiniLM and all-mpnet-base-v2 on MELD (bfloat16/float16 autocast; MPNet
# when bench/out/models/all-mpnet-base-v2 is there: scripts/fetch_mpnet.py, or --mpnet DIR), and float16 /
# bfloat16 extraction throughput in utterances/s (goal: 10,000/s for MiniLM on an H100).
# Writes bench/out/finetune_speed_cuda.json.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" bench/finetune_speed.py --device cuda "$@"
