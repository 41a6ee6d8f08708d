#!/usr/bin/env bash
# GPU check of the `cupy` backend, for a machine with an NVIDIA GPU and NO network:
#   1. the GPU tests (`pytest -m gpu`: every op test on real CuPy against the float64 oracle,
#      large convs, training steps, captured graphs);
#   2. cupy against PyTorch + cuDNN on the same GPU (`python -m polycnn.bench --device cuda`):
#      conv forward and forward+backward on the layers (a)-(e) of notes/perf-baseline.md and the
#      shapes CNN's training images/s (3x64x64, batch 128), eager and as a CUDA graph
#      (pc.CapturedStep, engine `cupy+graph`); once in float32 (cuDNN without TF32), once with
#      --precision tf32 (tensor cores, against cuDNN's allow_tf32); --check adds each forward's
#      relative error against cuDNN's on the very inputs timed;
#   3. `polycnn bench --backends cupy --quick` (the CPU-side benchmark, for the record).
# Needs: Python >= 3.10 with numpy, cupy (cupy-cuda12x or -13x), torch with CUDA, pytest, click,
# numba. Installs nothing: polycnn runs from this checkout through PYTHONPATH (a folder of links
# that mirrors the installed layout, polycnn.kernels and polycnn.cli included).
# Usage: bash benchmarks/gpu_check.sh   (each step has its own timeout: it ends within 10 minutes)
# Environment: PYTHON (default python3), PYTEST_TIMEOUT (200 s), BENCH_TIMEOUT (150 s per
#              precision), POLYCNN_BENCH_TIMEOUT (90 s; 0 skips step 3),
#              GPU_CHECK_DRY=1 (no GPU needed: step 2 on cupy-emu and PyTorch's CPU at tiny sizes,
#              to check the script itself before spending device time; its timings mean nothing).
set -u
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 2
PY="${PYTHON:-python3}"
PYTEST_TIMEOUT="${PYTEST_TIMEOUT:-200}"
BENCH_TIMEOUT="${BENCH_TIMEOUT:-150}"
POLYCNN_BENCH_TIMEOUT="${POLYCNN_BENCH_TIMEOUT:-90}"
status=0
section() { printf '\n==== %s ==== (%s)\n' "$1" "$(date -u +%H:%M:%S)"; }
polycnn() { "$PY" -c 'from polycnn.cli.main import main; main()' "$@"; }

SHIM="$(mktemp -d)"
trap 'rm -rf "$SHIM"' EXIT
mkdir -p "$SHIM/polycnn"
for entry in "$ROOT"/src/polycnn/*; do ln -s "$entry" "$SHIM/polycnn/"; done
ln -s "$ROOT/kernels" "$SHIM/polycnn/kernels"
ln -s "$ROOT/cli" "$SHIM/polycnn/cli"
export PYTHONPATH="$SHIM${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONDONTWRITEBYTECODE=1

section "environment"
uname -a
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
"$PY" --version
git log -1 --oneline 2>/dev/null || true
polycnn backends || status=1

if [ "${GPU_CHECK_DRY:-0}" = 1 ]; then
    echo "GPU_CHECK_DRY=1: step 1 (pytest -m gpu) and step 3 skipped; step 2 on cupy-emu and the CPU"
    POLYCNN_BENCH_TIMEOUT=0
    BENCH=(--backends cupy-emu --device cpu --quick --rounds 1 --layers a --train-batch 16
           --train-steps 1)
else
    section "1. pytest -m gpu (timeout ${PYTEST_TIMEOUT}s)"
    timeout "$PYTEST_TIMEOUT" "$PY" -m pytest -m gpu -q -ra -p no:cacheprovider \
        --continue-on-collection-errors tests 2>&1 | tail -n 60
    rc=${PIPESTATUS[0]}
    echo "pytest exit status: $rc"
    [ "$rc" -eq 0 ] || status=1
    BENCH=(--backends cupy --device cuda --rounds 5 --layers a,b,c,d,e --train-batch 128
           --train-steps 20)
fi

for precision in float32 tf32; do
    section "2. cupy vs PyTorch + cuDNN, $precision (timeout ${BENCH_TIMEOUT}s)"
    timeout "$BENCH_TIMEOUT" "$PY" -m polycnn.bench "${BENCH[@]}" --precision "$precision" \
        --models shapes --graph --check --no-startup --matmul-size 256
    rc=$?
    echo "benchmark exit status: $rc"
    [ "$rc" -eq 0 ] || status=1
done

if [ "$POLYCNN_BENCH_TIMEOUT" != "0" ]; then
    section "3. polycnn bench --backends cupy --quick (timeout ${POLYCNN_BENCH_TIMEOUT}s)"
    timeout "$POLYCNN_BENCH_TIMEOUT" "$PY" -c 'from polycnn.cli.main import main; main()' \
        bench --backends cupy --quick --no-torch --no-startup
    echo "polycnn bench exit status: $?"
fi

section "done: overall status $status"
exit "$status"
