#!/usr/bin/env bash
# One-shot check of the CUDA backend on a GPU machine, from a plain checkout
# (no pip install, no network):
#   1. python3 -m pytest -q tests/test_cuda.py tests/test_cuda_compile.py tests/test_torch_modules.py
#   2. python3 benchmarks/bench_gpu.py  (fastrnn vs torch cuDNN, float32)
# Logs and the table go to $OUT (default ./bench_results).  About 3-4 minutes on
# an H100 (the first NVRTC compile of the kernels is ~15 s of it).
#
# kernels/ is the package fastrnn._kernels only once installed, so the script
# stages the installed layout in a temporary folder (fastrnn/ with kernels/ as
# fastrnn/_kernels, plus tests/ and benchmarks/) and runs from there.
set -u
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-$ROOT/bench_results}
case "$OUT" in /*) ;; *) OUT=$ROOT/$OUT ;; esac
mkdir -p "$OUT"
export CUPY_TF32=0          # full-precision float32 GEMMs (CuPy's default; made explicit)
unset FASTRNN_BACKEND FASTRNN_CUDA_PATH

STAGE=$(mktemp -d "${TMPDIR:-/tmp}/fastrnn_stage.XXXXXX")
trap 'rm -rf "$STAGE"' EXIT
cp -r fastrnn "$STAGE/fastrnn"
rm -rf "$STAGE/fastrnn/_kernels"
cp -r kernels "$STAGE/fastrnn/_kernels"
cp -r tests benchmarks "$STAGE/"
cp pyproject.toml setup.py README.md "$STAGE/" 2>/dev/null
find "$STAGE" -name __pycache__ -type d -prune -exec rm -rf {} +
cd "$STAGE"
export PYTHONPATH=$STAGE

{
  echo "== $(date -u +%FT%TZ) gpu_check from $ROOT ($(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null))"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1
  python3 -c "import fastrnn._kernels.cuda.loader, fastrnn.dispatch as d; [print(v) for v in d.backends().values()]" 2>&1
} | tee "$OUT/env.log"

echo "== tests" | tee "$OUT/pytest.log"
# (the CPU emulation of the kernels in test_cuda_compile.py is for machines
#  without a GPU; here the real kernels run, so it is deselected)
timeout 170 python3 -m pytest -q -rs -p no:cacheprovider tests/test_cuda.py tests/test_cuda_compile.py \
    tests/test_torch_modules.py \
    -k "not emulated" 2>&1 | tee -a "$OUT/pytest.log"
rc_tests=${PIPESTATUS[0]}

echo "== benchmark" | tee "$OUT/bench.log"
timeout 200 python3 benchmarks/bench_gpu.py --out "$OUT" --budget 110 2>&1 | tee -a "$OUT/bench.log"
rc_bench=${PIPESTATUS[0]}

echo "== summary: tests rc=$rc_tests, bench rc=$rc_bench; logs in $OUT" | tee "$OUT/summary.log"
[ "$rc_tests" -eq 0 ] && [ "$rc_bench" -eq 0 ]
