#!/usr/bin/env bash
# All set-up, then the main job: start a Lightning Server, enqueue tasks, run the sample agent
# through a worker, and show the recorded rollouts and one rollout's span tree.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev,postgres
export PATH="$PWD/.venv/bin:$PATH"
workdir=$(mktemp -d)
port=${AGENTBOLT_DEMO_PORT:-8421}
export AGENTBOLT_SERVER="http://127.0.0.1:$port"

agentbolt serve --port "$port" --store "sqlite+aiosqlite:///$workdir/demo.db" > "$workdir/server.log" 2>&1 &
server_pid=$!
trap 'kill $server_pid 2>/dev/null || true; wait $server_pid 2>/dev/null || true' EXIT
healthy() { python -c 'import os, httpx; httpx.get(os.environ["AGENTBOLT_SERVER"] + "/health").raise_for_status()' 2>/dev/null; }
for _ in $(seq 1 100); do healthy && break; sleep 0.1; done
healthy || { echo "the server did not start:"; cat "$workdir/server.log"; exit 1; }

agentbolt enqueue examples/quickstart/tasks.jsonl --group-size 2
agentbolt worker examples.quickstart.agent:solve -n 4 --idle-exit 1
agentbolt rollouts list
# The 7th rollout is the first of the division-by-zero task's group.
first=$(python -c 'import os, httpx; print(httpx.get(os.environ["AGENTBOLT_SERVER"] + "/api/rollouts", params={"limit": 1, "offset": 6}).json()["items"][0]["rollout_id"])')
echo "Spans of rollout $first (the division by zero: a failed tool call):"
agentbolt rollouts spans "$first"
echo "Database: $workdir/demo.db   Export everything with: agentbolt export -o rollouts.jsonl (while a server runs)"
