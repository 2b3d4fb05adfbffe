#!/usr/bin/env bash
# The main job on a built-in default: installs what is missing, then profiles, plans and
# trains a small GPT-style model inside half its unoptimized peak memory.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
bash scripts/setup.sh
exec "$PY" -m memscale demo "$@"
