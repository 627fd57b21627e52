#!/usr/bin/env bash
# Create .venv and install Gradience with every extra, offline-safe and CUDA-free.
# torch 2.13.0 (CPU build) is installed first so that the project's torch range is
# already satisfied and pip never resolves the multi-GB CUDA wheels.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
STAMP="$VENV/.gradience-installed"
want=$(cat pyproject.toml scripts/bootstrap.sh | sha256sum | cut -d' ' -f1)

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && [ -x "$VENV/bin/gradience" ]; then
  exit 0
fi

echo "==> creating $VENV and installing gradience[all,dev] (first run only)" >&2
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
"$VENV/bin/python" -m pip install --quiet "torch==2.13.0"
"$VENV/bin/python" -m pip install --quiet -e ".[all,dev]"
if "$VENV/bin/python" -m pip list 2>/dev/null | grep -qi '^nvidia-'; then
  echo "bootstrap: CUDA wheels were pulled in; install torch==2.13.0 before the project" >&2
  exit 1
fi
echo "$want" > "$STAMP"
