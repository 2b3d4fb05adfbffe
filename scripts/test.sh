#!/usr/bin/env bash
# Runs every test: the torch-free core (GoogleTest, built without torch), the torch
# layer's C++ tests, and the Python suite. Installs what is missing first.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
bash scripts/setup.sh

echo "== C++ core tests (MEMSCALE_WITH_TORCH=OFF)"
[ -f build/core/build.ninja ] || cmake -S . -B build/core -G Ninja -DMEMSCALE_WITH_TORCH=OFF -DMEMSCALE_BUILD_TESTS=ON >/dev/null
cmake --build build/core -j2
ctest --test-dir build/core --output-on-failure --no-tests=error

echo "== C++ tests of the torch build"
ctest --test-dir build/wheel --output-on-failure --no-tests=error

echo "== Python tests"
# pytest exits 5 when it collects nothing: that must fail, and does under set -e.
"$PY" -m pytest tests/python -q -p no:cacheprovider "$@"
