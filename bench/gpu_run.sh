#!/usr/bin/env bash
# bench/train_gpu.py in one go on a GPU machine that has PyTorch, transformers and PEFT but not
# the rest of finetuned's dependencies, and may be offline:
#
#   bash bench/gpu_run.sh [train_gpu.py options]
#
# Wheels in .whl/ are installed first (pydantic, pydantic-core, annotated-types, typing-inspection,
# bitsandbytes: see docs/training.md for the download line). The reference script is taken from
# ../shared/bench, or from $FINETUNED_SHARED (default .gpu-shared/, a copy carried with the checkout).
# The log and the JSON also go to $OUT when it is set.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if compgen -G ".whl/*.whl" > /dev/null; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/finetuned-site .whl/*.whl
  export PYTHONPATH="/tmp/finetuned-site"
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if [ ! -d ../shared/bench ] && [ -z "${FINETUNED_SHARED:-}" ]; then
  export FINETUNED_SHARED="$PWD/.gpu-shared"
fi
out="${OUT:-bench/results}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2> /dev/null || true
"$PYTHON" bench/train_gpu.py "$@" 2>&1 | tee "$out/train_gpu.log"
for f in bench/results/train_gpu.json bench/results/train_gpu_smoke.json; do
  if [ -f "$f" ] && [ "$out" != bench/results ]; then cp "$f" "$out/"; fi
done
