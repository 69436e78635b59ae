#!/usr/bin/env bash
# Create the venv (if absent) and install agentbolt with the extras given (default: dev,postgres).
# The venv is .venv, or $AGENTBOLT_VENV when set (CI checks the main command in a venv of its own).
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${AGENTBOLT_VENV:-.venv}"
extras="${1:-dev,postgres}"
python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)'; then
  echo "agentbolt needs Python >= 3.10; $python is $("$python" --version 2>&1). Set PYTHON=/path/to/python3.x" >&2
  exit 1
fi
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
if [[ ",${extras}," == *",train,"* ]] && ! "$venv"/bin/python -c 'import torch' >/dev/null 2>&1; then
  # Pinned first, on purpose: left to resolve `torch>=2.3` itself, pip would pull the CUDA build and
  # its GBs of nvidia-* wheels; 2.13.0 is the CPU wheel this project is tested with.
  "$venv"/bin/pip install -q --disable-pip-version-check torch==2.13.0
fi
"$venv"/bin/pip install -q --disable-pip-version-check -e ".[${extras}]"
if [[ ",${extras}," == *",verl,"* ]]; then
  # VeRL without its declared dependencies: they pin transformers<5.11 (see the verl extra in pyproject.toml,
  # which installs what the VeRL code agentbolt drives does import).
  "$venv"/bin/pip install -q --disable-pip-version-check --no-deps "verl>=0.9.1,<0.10"
fi
"$venv"/bin/python -c 'import agentbolt' >/dev/null
