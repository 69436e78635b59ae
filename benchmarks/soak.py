"""Soak: worker load on a real server for N minutes; rollouts/s per minute and the server's memory.

Starts ``agentbolt serve`` on loopback (SQLite file, no model) and ``--processes`` ``agentbolt worker``
processes running :func:`trivial` (one tool span and a reward per rollout) with ``--concurrency`` each.
This process keeps the queue topped up, and once a minute prints the rollouts finished per second in that
minute and the server's resident memory. At the end it checks that no rollout failed, prints the server's
RSS start → end and writes benchmarks/results/soak.json. A steady rate and a flat RSS are what to look for.

    python benchmarks/soak.py               # 5 minutes
    python benchmarks/soak.py --minutes 1
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from store_throughput import start_server  # benchmarks/ is on the path when a benchmark runs as a script

import agentbolt
from agentbolt.server.background import free_port

HERE = Path(__file__).parent
QUEUE_LOW, REFILL = 200, 500  # top the queue up by REFILL rollouts when fewer than QUEUE_LOW wait


@agentbolt.rollout
def trivial(task: Any, llm: agentbolt.LLM) -> float:
    """The soak's agent: one tool call, reward 1."""
    with agentbolt.tool_call("echo", {"task": task}) as call:
        call.set_result(task)
    return 1.0


def rss_mib(pid: int) -> float:
    """Resident memory of a process, in MiB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def count(client: httpx.Client, status: str) -> int:
    total: int = client.get("/api/rollouts", params={"status": status, "limit": 1}).json()["total"]
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--processes", type=int, default=2, help="agentbolt worker processes")
    parser.add_argument("--concurrency", type=int, default=8, help="rollouts at once per worker process")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "soak.json")
    args = parser.parse_args()

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as tmp:
        server = start_server(f"sqlite:///{tmp}/soak.db", port)
        workers: list[subprocess.Popen[bytes]] = []
        try:
            rss_start = rss_mib(server.pid)
            env = {**os.environ, "PYTHONPATH": str(HERE)}
            for i in range(args.processes):
                workers.append(
                    subprocess.Popen(
                        [
                            *(sys.executable, "-m", "agentbolt.cli", "worker", "soak:trivial", "--server", url),
                            *("-n", str(args.concurrency), "--worker-id", f"soak-{i}"),
                        ],
                        cwd=HERE,
                        env=env,
                        stdout=subprocess.DEVNULL,
                    )
                )
            per_minute: list[dict[str, float]] = []
            with httpx.Client(base_url=url, timeout=60) as client:
                enqueued = 0
                start = time.monotonic()
                end = start + args.minutes * 60
                minute_start, done_before = start, 0

                def record_minute(now: float) -> None:
                    nonlocal minute_start, done_before
                    done = count(client, "succeeded")
                    row = {
                        "minute": len(per_minute) + 1,
                        "seconds": round(now - minute_start, 1),
                        "rollouts_per_s": round((done - done_before) / (now - minute_start), 1),
                        "server_rss_mib": round(rss_mib(server.pid), 1),
                    }
                    per_minute.append(row)
                    print(
                        f"minute {row['minute']}: {row['rollouts_per_s']} rollouts/s, "
                        f"server RSS {row['server_rss_mib']} MiB",
                        flush=True,
                    )
                    minute_start, done_before = now, done

                while (now := time.monotonic()) < end:
                    if count(client, "queuing") < QUEUE_LOW:
                        batch = [{"input": enqueued + i} for i in range(REFILL)]
                        client.post("/api/rollouts/batch", json=batch).raise_for_status()
                        enqueued += REFILL
                    if now - minute_start >= 60:
                        record_minute(now)
                    time.sleep(min(1.0, max(end - now, 0.0)))
                if time.monotonic() - minute_start >= 5:  # the last, partial minute
                    record_minute(time.monotonic())
                for proc in workers:  # graceful: running rollouts finish or are released
                    proc.terminate()
                for proc in workers:
                    proc.wait(timeout=60)
                elapsed = time.monotonic() - start
                succeeded, failed = count(client, "succeeded"), count(client, "failed")
            rss_end = rss_mib(server.pid)
        finally:
            for proc in workers:
                if proc.poll() is None:
                    proc.kill()
            server.terminate()
            server.wait(timeout=30)
    print(
        f"{succeeded} rollouts succeeded, {failed} failed in {elapsed:.0f} s "
        f"({succeeded / elapsed:.1f} rollouts/s); server RSS {rss_start:.1f} → {rss_end:.1f} MiB"
    )
    result = {
        "benchmark": "soak",
        "cpu_count": os.cpu_count(),
        "minutes": args.minutes,
        "processes": args.processes,
        "concurrency": args.concurrency,
        "succeeded": succeeded,
        "failed": failed,
        "rollouts_per_s": round(succeeded / elapsed, 1),
        "per_minute": per_minute,
        "server_rss_mib": {"start": round(rss_start, 1), "end": round(rss_end, 1)},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    if failed:
        raise SystemExit(f"{failed} rollouts failed during the soak")


if __name__ == "__main__":
    main()
