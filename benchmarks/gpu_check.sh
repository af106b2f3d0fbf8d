#!/usr/bin/env bash
# The project's GPU check: one unattended script, under 8 minutes on an H200.
#
#   1. the CUDA tests (pytest -m gpu): semi-structured 2:4 kernels, device peak
#      memory, the evaluation with kernels, and any other test marked gpu;
#   2. benchmarks/gpu/linear_24.py: fp16 Linear 8192x8192 and 8192x28672 at
#      1, 16, 256 and 4096 tokens, semi-structured 2:4 (cuSPARSELt, CUTLASS)
#      against dense;
#   3. benchmarks/gpu/sparsegpt_block.py: SparseGPT seconds for one 7B-sized
#      decoder block (128 x 2048 calibration tokens).
#
# Usage: benchmarks/gpu_check.sh [OUT_DIR]     (default: benchmarks/results/gpu)
# Python: $PYTHON, else .venv/bin/python, else python3 - the first whose torch sees CUDA.
# Needs torch with CUDA, transformers, accelerate, safetensors, matplotlib, psutil,
# pydantic, pyyaml, pytest (+ pytest-timeout). On a machine without registry
# access carry wheels, e.g. for pydantic:
#   pip download --no-deps --only-binary=:all: -d .whl pydantic pydantic-core annotated-types typing-inspection
#   pip install --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
# Each step has its own time limit; the script goes on after a failed step and
# exits non-zero if any step failed. Figures go to OUT_DIR/*.json and the log.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-benchmarks/results/gpu}
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
: >"$LOG"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/job_image:$PWD/operator${PYTHONPATH:+:$PYTHONPATH}"

say() { echo "== $*" | tee -a "$LOG"; }

pick_python() {
  for py in ${PYTHON:-} .venv/bin/python python3; do
    if [ -x "$(command -v "$py" 2>/dev/null)" ] && "$py" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
      echo "$py"; return 0
    fi
  done
  return 1
}

PY=$(pick_python) || { say "no Python with a CUDA-enabled torch found; nothing run"; exit 2; }
say "python: $PY"
"$PY" - <<'PYEOF' 2>&1 | tee -a "$LOG"
import torch
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name()}, "
      f"{torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB")
for name in ("transformers", "accelerate", "safetensors", "matplotlib", "psutil", "pydantic", "yaml", "pytest"):
    try:
        module = __import__(name)
        print(f"  {name} {getattr(module, '__version__', '?')}")
    except ImportError:
        print(f"  {name} MISSING")
PYEOF
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader | tee -a "$LOG"

failed=()
step() {  # step NAME SECONDS COMMAND...
  local name=$1 limit=$2; shift 2
  say "$name (limit ${limit}s)"
  local start=$SECONDS
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  say "$name: rc=$rc in $((SECONDS - start))s"
  [ "$rc" -eq 0 ] || failed+=("$name (rc=$rc)")
}

# Only files that hold gpu-marked tests: the rest of the suite needs packages
# (kopf, kmock, nanio, ...) that a GPU box need not have.
mapfile -t GPU_TESTS < <(grep -rlE 'mark\.gpu|pytest\.mark\.gpu' tests --include='test_*.py' | sort)
if [ "${#GPU_TESTS[@]}" -gt 0 ]; then
  step "pytest -m gpu" 180 "$PY" -m pytest -m gpu -q -p no:cacheprovider -o addopts=-ra \
    --junitxml="$OUT/gpu_tests.xml" "${GPU_TESTS[@]}"
  # On a GPU machine a skipped CUDA test is a failure of this check, not a pass.
  if grep -qE 'skipped="[1-9]' "$OUT/gpu_tests.xml" 2>/dev/null; then
    say "some gpu tests were skipped on a machine with CUDA"; failed+=("gpu tests skipped")
  fi
else
  say "no gpu-marked tests found"; failed+=("no gpu tests")
fi
step "2:4 vs dense Linear" 90 "$PY" benchmarks/gpu/linear_24.py --json "$OUT/linear_24.json"
step "SparseGPT 7B block" 150 "$PY" benchmarks/gpu/sparsegpt_block.py --json "$OUT/sparsegpt_block.json"

if [ "${#failed[@]}" -gt 0 ]; then
  say "FAILED: ${failed[*]}"; exit 1
fi
say "all GPU checks passed; figures in $OUT"
