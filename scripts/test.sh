#!/usr/bin/env bash
# The whole quality gate: lint, type check of the core, and the test suite (offline).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${VENV:-.venv}/bin
scripts/system-deps.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
echo "==> ruff" >&2
"$BIN/ruff" check src tests benchmarks $( [ -d examples ] && echo examples )
echo "==> mypy (all of src)" >&2
"$BIN/mypy"
echo "==> pytest" >&2
"$BIN/python" -m pytest "$@"
