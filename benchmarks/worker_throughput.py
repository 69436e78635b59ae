"""Worker throughput: ``agentbolt serve`` (SQLite) + ``agentbolt worker`` running a trivial agent, end to end.

Starts the server and, per concurrency, one worker process on loopback (``benchmarks/trivial_agent.py``:
five annotation/tool spans and a reward, plus the worker's attempt root span). Once the worker sits idle,
its runners long-polling, it enqueues the rollouts and waits for all of them to succeed. It reports
end-to-end rollouts/s (enqueue to the last finish) and the CPU seconds per rollout of the worker process
and of the server process (user + system from /proc through psutil, read before the enqueue and after the
last finish, so start-up is not counted), checks that a sample rollout has all its spans, and writes JSON
to ``benchmarks/results/worker_throughput.json``. On a small machine server and worker share the cores:
the sum of both CPU figures bounds the end-to-end rate.

    python benchmarks/worker_throughput.py                    # -n 32 and -n 64, 2,000 rollouts each
    python benchmarks/worker_throughput.py --concurrency 64 --rollouts 500
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from store_throughput import start_server as serve  # benchmarks/ is on the path when run as a script

from agentbolt.client import ServerClient
from agentbolt.server.background import free_port
from agentbolt.types import RolloutCreate, RolloutStatus

ROOT = Path(__file__).resolve().parent.parent
AGENT = "benchmarks.trivial_agent:solve"
SPANS_PER_ROLLOUT = 7  # the attempt's root span, 5 from the agent, the reward
ENQUEUE_CHUNK = 1_000


def start_server(store_url: str, port: int, profile: Path | None) -> subprocess.Popen[bytes]:
    """``agentbolt serve`` (under cProfile when ``profile`` is given), once it answers ``/health``."""
    python_args = ["-m", "cProfile", "-o", str(profile)] if profile is not None else []
    return serve(store_url, port, python_args, cwd=ROOT)


def start_worker(url: str, concurrency: int, worker_id: str, profile: Path | None) -> subprocess.Popen[bytes]:
    command = [sys.executable]
    if profile is not None:
        command += ["-m", "cProfile", "-o", str(profile)]
    command += ["-m", "agentbolt", "worker", AGENT, "--server", url, "-n", str(concurrency), "--worker-id", worker_id]
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL)


async def wait_until_polling(proc: psutil.Process) -> None:
    """Until the worker has started up and sits idle, its runners long-polling (its CPU time stops growing)."""
    deadline = time.monotonic() + 60
    last = -1.0
    while time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        times = proc.cpu_times()
        used = times.user + times.system
        if used - last < 0.02 and used > 0.2:
            return
        last = used
    raise RuntimeError("the worker did not settle into polling")


def cpu_s(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


async def run_one(
    url: str, server: psutil.Process, concurrency: int, rollouts: int, profile: Path | None
) -> dict[str, object]:
    worker_id = f"bench{concurrency}"
    worker = start_worker(url, concurrency, worker_id, profile)
    proc = psutil.Process(worker.pid)
    try:
        async with ServerClient(url, timeout_s=120.0) as client:
            await wait_until_polling(proc)
            cpu0, server0 = cpu_s(proc), cpu_s(server)
            t0 = time.perf_counter()
            ids: list[str] = []
            for start in range(0, rollouts, ENQUEUE_CHUNK):
                batch = [RolloutCreate(input={"i": i}) for i in range(start, min(rollouts, start + ENQUEUE_CHUNK))]
                ids += [r.rollout_id for r in await client.enqueue(batch)]
            pending = ids
            while pending:
                pending = (await client.wait(pending, timeout_s=60.0)).pending
            elapsed = time.perf_counter() - t0
            cpu1, server1 = cpu_s(proc), cpu_s(server)
            total = (await client.query_rollouts(limit=1)).total
            succeeded = (await client.query_rollouts(status=[RolloutStatus.SUCCEEDED], limit=1)).total
            sample = await client.all_spans(ids[rollouts // 2])
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
    assert succeeded >= rollouts, f"only {succeeded} of {total} rollouts succeeded"
    assert len(sample) == SPANS_PER_ROLLOUT, f"a rollout has {len(sample)} spans, expected {SPANS_PER_ROLLOUT}"
    worker_cpu, server_cpu = cpu1 - cpu0, server1 - server0
    result = {
        "concurrency": concurrency,
        "rollouts": rollouts,
        "seconds": round(elapsed, 3),
        "rollouts_per_s": round(rollouts / elapsed, 1),
        "worker_cpu_s": round(worker_cpu, 3),
        "worker_cpu_ms_per_rollout": round(1000 * worker_cpu / rollouts, 3),
        "server_cpu_ms_per_rollout": round(1000 * server_cpu / rollouts, 3),
    }
    print(
        f"-n {concurrency}: {rollouts} rollouts in {elapsed:.2f} s = {result['rollouts_per_s']} rollouts/s; "
        f"worker CPU {worker_cpu:.2f} s = {result['worker_cpu_ms_per_rollout']} ms/rollout; "
        f"server CPU {result['server_cpu_ms_per_rollout']} ms/rollout"
    )
    return result


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rollouts", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, action="append", help="worker -n (repeatable; default 32 and 64)")
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="cProfile worker and server: PREFIX-n{N}.prof, PREFIX-server-n{N}.prof",
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "worker_throughput.json")
    args = parser.parse_args()
    load_at_start = os.getloadavg()[0]  # figures taken on a busy machine are not comparable
    print(f"1-minute load average at start: {load_at_start:.2f}")

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for concurrency in args.concurrency or [32, 64]:
            port = free_port()  # a fresh server and store per run: runs do not see each other's rows
            profile = Path(f"{args.profile}-n{concurrency}.prof") if args.profile else None
            server_profile = Path(f"{args.profile}-server-n{concurrency}.prof") if args.profile else None
            server = start_server(f"sqlite:///{tmp}/bench-{concurrency}.db", port, server_profile)
            try:
                url = f"http://127.0.0.1:{port}"
                results.append(await run_one(url, psutil.Process(server.pid), concurrency, args.rollouts, profile))
            finally:
                server.send_signal(signal.SIGINT)  # uvicorn exits cleanly (and a profile is written)
                server.wait(timeout=30)
    best = max(results, key=lambda r: float(r["rollouts_per_s"]))  # type: ignore[arg-type]
    summary = {
        "benchmark": "worker_throughput",
        "cpu_count": os.cpu_count(),
        "load_average_1m_at_start": round(load_at_start, 2),
        "best_rollouts_per_s": best["rollouts_per_s"],
        "worker_cpu_ms_per_rollout": best["worker_cpu_ms_per_rollout"],  # at the best run's concurrency
        "results": results,
    }
    print(
        f"best {summary['best_rollouts_per_s']} rollouts/s; "
        f"worker CPU {summary['worker_cpu_ms_per_rollout']} ms/rollout"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    asyncio.run(main())
