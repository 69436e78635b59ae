#!/usr/bin/env bash
# All set-up, then lint, type checks and the whole test suite (SQLite and PostgreSQL).
# Extra arguments go to pytest, e.g.  bash scripts/test.sh -k store -x
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev,postgres,train,frameworks,verl  # frameworks: tests/integrations, tests/examples; verl: tests/trainer/verl
venv="${AGENTBOLT_VENV:-.venv}"
if [ -z "${AGENTBOLT_TEST_PG_URL:-}" ]; then
  AGENTBOLT_TEST_PG_URL=$(bash scripts/postgres.sh | tail -n 1)
  export AGENTBOLT_TEST_PG_URL
fi
echo "== ruff"
"$venv"/bin/ruff check agentbolt tests benchmarks examples
echo "== mypy"
"$venv"/bin/mypy
echo "== pytest"
# Every extra is installed above, so a suite skipped for a missing package is a failure here.
AGENTBOLT_TESTS_REQUIRE_EXTRAS=1 "$venv"/bin/pytest -q "$@"
