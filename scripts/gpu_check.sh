#!/usr/bin/env bash
# Check the GPU paths of the trainer (precision steps, FSDP, a short run with evaluation, resume
# after kill -9); prints a table and writes OUT_DIR/gpu_check.json. Exits non-zero on any failure.
#   bash scripts/gpu_check.sh OUT_DIR                            # on a CUDA machine (under 8 minutes)
#   SDSH_GPU_CHECK_DEVICE=cpu bash scripts/gpu_check.sh OUT_DIR  # the same checks, tiny sizes, on the CPU
set -euo pipefail
if [ $# -ne 1 ]; then
  echo "usage: [SDSH_GPU_CHECK_DEVICE=cpu] bash scripts/gpu_check.sh OUT_DIR" >&2
  exit 2
fi
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# $PYTHON if set, else the project's .venv (what `make install` creates), else python on the PATH
if [ -z "${PYTHON:-}" ] && [ -x "$repo/.venv/bin/python" ]; then
  python="$repo/.venv/bin/python"
else
  python="${PYTHON:-python}"
fi
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
exec "$python" "$repo/scripts/gpu_check.py" "$1" --device "${SDSH_GPU_CHECK_DEVICE:-cuda}"
