#!/usr/bin/env bash
# Prove the CUDA paths on a lent GPU machine, in under 5 minutes, offline, with the venv's packages only:
# one GPU with mixed precision on digits, then DDP over every GPU (NCCL, plain and SyncBatchNorm) when
# there are several. Prints samples/s and a JSON line; exit status 0 means every run finished.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
export HF_HUB_OFFLINE=1 TORCH_HOME="${TMPDIR:-/tmp}/gpu-check-torch-home"  # nothing may be fetched
timeout 280 "$PY" bench/gpu_check.py --epochs "${EPOCHS:-4}" --side "${SIDE:-32}"
