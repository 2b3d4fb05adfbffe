#!/usr/bin/env bash
# Installs whatever is missing (Debian packages, torch==2.13.0, Python deps) and builds
# and installs memscale. Idempotent: when no build input changed it returns in seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

say() { printf '[setup] %s\n' "$*" >&2; }

missing=()
# ccache: a fresh clone (CI) recompiles nothing that an earlier clone on this machine compiled.
for pkg in g++ ccache libgtest-dev nlohmann-json3-dev libspdlog-dev libfmt-dev; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# Never let pip resolve an unpinned torch (that downloads a multi-GB CUDA build).
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  say "installing torch==2.13.0"
  "$PY" -m pip install -q torch==2.13.0
fi
pydeps=()
# matplotlib draws reports, tqdm shows benchmark progress, accelerate is the offload peer,
# jsonschema checks that the Config schema is a valid JSON Schema (a test).
for mod in psutil:psutil safetensors:safetensors numpy:numpy pytest:pytest scikit_build_core:scikit-build-core \
           cmake:cmake ninja:ninja matplotlib:matplotlib tqdm:tqdm accelerate:accelerate jsonschema:jsonschema; do
  "$PY" -c "import ${mod%%:*}" >/dev/null 2>&1 || pydeps+=("${mod##*:}")
done
if [ ${#pydeps[@]} -gt 0 ]; then
  say "installing Python packages: ${pydeps[*]}"
  "$PY" -m pip install -q "${pydeps[@]}"
fi
# Hugging Face models built from configs for the profiler's accuracy tests, at versions
# checked against torch 2.13.0 (peft requires torch: the installed one is held as a
# constraint so pip can never replace it). PuLP (with its CBC solver) runs PyTorch's
# sac_ilp in the plan_quality benchmark. scikit-learn trains the auto_policy tree
# (python -m memscale.policy.train; a test re-trains it byte for byte).
hfdeps=()
for pin in transformers==5.24.0 peft==0.21.2 pytorch-lightning==2.6.6 pulp==2.9.0 scikit-learn==1.7.2; do
  "$PY" -c "import importlib.metadata as m, sys; sys.exit(m.version('${pin%%==*}') != '${pin##*==}')" \
    >/dev/null 2>&1 || hfdeps+=("$pin")
done
if [ ${#hfdeps[@]} -gt 0 ]; then
  say "installing Python packages: ${hfdeps[*]}"
  "$PY" -m pip install -q "${hfdeps[@]}" \
    -c <("$PY" -c "import torch; print('torch==' + torch.__version__)")
fi

. scripts/ccache-env.sh

# Rebuild only when a build input (or the torch it builds against) changed.
stamp_dir=build
mkdir -p "$stamp_dir"
inputs=$( { "$PY" -c "import sys, torch; print(sys.executable, torch.__version__)";
            git ls-files -co --exclude-standard -- CMakeLists.txt cmake include src bindings python pyproject.toml tests/cpp \
              | LC_ALL=C sort | while read -r f; do [ -f "$f" ] && sha1sum "$f"; done; } | sha1sum | cut -d' ' -f1)
if [ -f "$stamp_dir/install.stamp" ] && [ "$(cat "$stamp_dir/install.stamp")" = "$inputs" ] \
   && "$PY" -c "import memscale" >/dev/null 2>&1; then
  say "memscale is up to date"
  exit 0
fi
say "building and installing memscale (incremental build in build/wheel)"
MEMSCALE_BUILD_TESTS=ON MEMSCALE_BUILD_CORE_TESTS=OFF CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-2} \
  "$PY" -m pip install -q --no-build-isolation --no-deps .
echo "$inputs" > "$stamp_dir/install.stamp"
say "memscale $("$PY" -c 'import memscale; print(memscale.__version__)') installed"
