#!/usr/bin/env bash
# Create .venv (if absent) and install agentbolt with the extras given (default: dev,postgres).
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-dev,postgres}"
python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)'; then
  echo "agentbolt needs Python >= 3.10; $python is $("$python" --version 2>&1). Set PYTHON=/path/to/python3.x" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
.venv/bin/pip install -q --disable-pip-version-check -e ".[${extras}]"
.venv/bin/python -c 'import agentbolt' >/dev/null
