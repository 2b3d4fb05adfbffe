#!/usr/bin/env bash
# On a CUDA machine: builds MemScale against that machine's own torch, runs the C++ and
# Python tests there (the CUDA tests included) and the device-aware benchmarks on the GPU.
#   bash scripts/gpu-check.sh [build] [ctest] [cuda-tests] [bench-quick] [bench] [tests]
# (no stage named = all of them, in that order). Logs and result JSON go to $OUT
# (default build/gpu-out). For a machine without network, the C++ dependencies can come
# from a prefix of unpacked Debian packages: MEMSCALE_DEPS_PREFIX=/path (holding usr/).
# A failing stage is reported and the next one still runs; the exit status is the number
# of failed stages.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-build/gpu-out}
DEPS=${MEMSCALE_DEPS_PREFIX:-}
mkdir -p "$OUT"
stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(build ctest cuda-tests bench tests)
export PYTHONPATH="$PWD/python${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
failed=0
# The scenarios that measure on the GPU (the others are CPU-only or device-independent).
GPU_SCENARIOS=${GPU_SCENARIOS:-"training_sweep tiling_lce estimate_accuracy"}

stage() {  # stage NAME COMMAND...: run, log to $OUT/NAME.log, report the time and status
  local name=$1; shift
  local start=$SECONDS
  echo "== $name"
  if "$@" >"$OUT/$name.log" 2>&1; then
    echo "   ok ($((SECONDS - start)) s)"
  else
    echo "   FAILED ($((SECONDS - start)) s); last lines:"; tail -n 40 "$OUT/$name.log"
    failed=$((failed + 1))
  fi
}

build() {
  nvidia-smi -L
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
  cmake -S . -B build/gpu -G Ninja -DMEMSCALE_BUILD_PYTHON=ON -DMEMSCALE_PYTHON_INPLACE=ON \
    -DMEMSCALE_BUILD_TESTS=ON -DPython_EXECUTABLE="$(command -v "$PY")" ${DEPS:+-DCMAKE_PREFIX_PATH="$DEPS/usr"} &&
    cmake --build build/gpu -j "$(nproc)"
}

for s in "${stages[@]}"; do
  case $s in
    build) stage build build ;;
    ctest) stage ctest ctest --test-dir build/gpu --output-on-failure --no-tests=error ;;
    cuda-tests) stage cuda-tests "$PY" -m pytest tests/python/test_cuda.py tests/python/test_track_memory.py \
                  tests/python/test_hardware.py -v -p no:cacheprovider -rs ;;
    bench-quick|bench)  # one results file per scenario, so one failure does not hide the others
      for scenario in $GPU_SCENARIOS; do
        stage "$s-$scenario" "$PY" -m memscale bench --device cuda --scenario "$scenario" \
          --out "$OUT/$s-$scenario.json" $([ "$s" = bench-quick ] && echo --quick)
      done ;;
    tests) stage tests "$PY" -m pytest tests/python -q -p no:cacheprovider -rs ;;
    *) echo "unknown stage $s (build ctest cuda-tests bench-quick bench tests)"; exit 2 ;;
  esac
done
exit $failed
