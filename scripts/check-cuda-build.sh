#!/usr/bin/env bash
# Compiles and links the torch layer and its C++ tests against a CUDA build of torch, so
# the MEMSCALE_WITH_CUDA branches are checked on a machine without a GPU (nothing runs).
#   CUDA_PYTHON=/opt/cuda-venv/bin/python bash scripts/check-cuda-build.sh
# The venv: python3 -m venv /opt/cuda-venv && /opt/cuda-venv/bin/pip install torch==2.14.1
set -euo pipefail
cd "$(dirname "$0")/.."
CUDA_PYTHON=${CUDA_PYTHON:-/opt/cuda-venv/bin/python}
CUDA_ROOT=${CUDA_ROOT:-/usr/local/cuda}
"$CUDA_PYTHON" -c "import torch, sys; sys.exit(0 if torch.version.cuda else 'torch at $CUDA_PYTHON has no CUDA')"
cmake -S . -B build/cuda-check -G Ninja -DPython_EXECUTABLE="$CUDA_PYTHON" -DCUDAToolkit_ROOT="$CUDA_ROOT" \
  -DCUDA_TOOLKIT_ROOT_DIR="$CUDA_ROOT" -DCMAKE_CUDA_COMPILER="$CUDA_ROOT/bin/nvcc" -DMEMSCALE_BUILD_TESTS=ON \
  | grep "memscale:"
cmake --build build/cuda-check -j "${JOBS:-1}" --target memscale_torch memscale_torch_tests
echo "CUDA build check: memscale::torch and its tests compile and link against CUDA torch"
