#!/usr/bin/env bash
# Creates .venv with everything olmo-train needs on a CPU machine (idempotent; a few minutes on a fresh one).
# GPU machines: pip install -e ".[gpu]" into an environment that already has CUDA torch.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.olmo-train-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/pip install -q --disable-pip-version-check "torch==2.13.0"   # CPU build; a bare torch pulls CUDA
  .venv/bin/pip install -q --disable-pip-version-check -e ".[dev]"
  if .venv/bin/python -c "import triton" 2>/dev/null; then
    echo "setup.sh: triton is importable in .venv; fla would pick GPU kernels on this CPU machine: pip uninstall triton" >&2
    exit 1
  fi
  touch "$stamp"
fi
