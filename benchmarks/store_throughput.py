"""Store throughput through a real server: concurrent workers doing dequeue → 6 spans → finish over HTTP.

Starts ``agentbolt serve`` as a separate process on loopback (SQLite file; PostgreSQL too when a URL is
given), enqueues the rollouts, then runs ``--workers`` concurrent client loops in this process, in two
ways (``--batch``):

* one rollout a request (``--batch 1``), as any client can: each loop claims a rollout
  (``/api/dequeue``), sends its 6 spans as one OTLP/HTTP protobuf request (as the OTel batch exporter
  does), and finishes the attempt (``.../finish``);
* N rollouts a request (``--batch N``), as ``agentbolt worker`` does with N runners in flight: each loop
  claims N (``/api/dequeue/batch``), sends their spans in one OTLP request and finishes them in one
  ``/api/attempts/finish``.

The load generator uses aiohttp rather than agentbolt's httpx-based client: on 2 cores, httpx's own CPU
cost per request capped the measurement near 100 rollouts/s (the server was half idle), so the figure
would have measured the client, not the server and store.

Prints rollouts/s, spans/s and the server's CPU per rollout (user + system, from /proc via psutil) per
backend and batch size, checks that every rollout succeeded and every span was stored, and writes JSON to
benchmarks/results/. On a small machine the load generator shares the cores with the server; the server's
capacity, what one core of it could serve, is ``1000 / server_cpu_ms_per_rollout``.

    python benchmarks/store_throughput.py                       # SQLite, --batch 1 and 8
    python benchmarks/store_throughput.py --pg-url postgresql+asyncpg://postgres@127.0.0.1:55432/postgres
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import aiohttp
import httpx
import psutil
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans
from opentelemetry.proto.trace.v1.trace_pb2 import Span as PbSpan

from agentbolt.server.background import free_port

SPANS_PER_ROLLOUT = 6


def _kv(key: str, value: str | int | bool) -> KeyValue:
    if isinstance(value, bool):
        return KeyValue(key=key, value=AnyValue(bool_value=value))
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=value))


def otlp_body(rollout_id: str, attempt_id: str) -> bytes:
    """Six spans of one attempt (agent, 2 LLM-ish calls, 2 tools, reward), as the OTel exporter sends them."""
    trace_id = secrets.token_bytes(16)
    root_id = secrets.token_bytes(8)
    now = time.time_ns()
    names = ["invoke_agent solver", "chat policy", "execute_tool search", "chat policy", "execute_tool calc", "reward"]
    spans = []
    for i, name in enumerate(names):
        spans.append(
            PbSpan(
                trace_id=trace_id,
                span_id=root_id if i == 0 else secrets.token_bytes(8),
                parent_span_id=b"" if i == 0 else root_id,
                name=name,
                kind=PbSpan.SPAN_KIND_INTERNAL,
                start_time_unix_nano=now + i * 1000,
                end_time_unix_nano=now + i * 1000 + 500,
                attributes=[
                    _kv("agentbolt.rollout_id", rollout_id),
                    _kv("agentbolt.attempt_id", attempt_id),
                    _kv("gen_ai.operation.name", name.split()[0]),
                    _kv("agentbolt.tool.success", True),
                    _kv("step", i),
                ],
            )
        )
    request = ExportTraceServiceRequest(resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=spans)])])
    return request.SerializeToString()


async def worker_loop(
    session: aiohttp.ClientSession, base: str, worker_id: str, batch: int, counts: dict[str, int]
) -> None:
    """Claim, send spans and finish until the queue is empty: one rollout a request, or ``batch`` at a time."""
    protobuf = {"content-type": "application/x-protobuf"}
    runners = [f"{worker_id}-{i}" for i in range(batch)]
    while True:
        if batch == 1:
            async with session.post(f"{base}/api/dequeue", json={"worker_id": worker_id}) as r:
                if r.status == 204:
                    return
                assert r.status == 200, await r.text()
                claims = [await r.json()]
        else:
            async with session.post(f"{base}/api/dequeue/batch", json={"worker_ids": runners}) as r:
                assert r.status == 200, await r.text()
                claims = await r.json()
            if not claims:
                return
        ids = [(c["rollout"]["rollout_id"], c["attempt"]["attempt_id"]) for c in claims]
        async with session.post(f"{base}/v1/traces", data=otlp_request(ids), headers=protobuf) as r:
            assert r.status == 200, await r.text()
            await r.read()
        if batch == 1:
            [(rollout_id, attempt_id)] = ids
            finish = f"{base}/api/rollouts/{rollout_id}/attempts/{attempt_id}/finish"
            async with session.post(finish, json={"status": "succeeded", "reward": 1.0}) as r:
                assert r.status == 200, await r.text()
                await r.read()
        else:
            body = [{"rollout_id": r, "attempt_id": a, "status": "succeeded", "reward": 1.0} for r, a in ids]
            async with session.post(f"{base}/api/attempts/finish", json=body) as r:
                assert r.status == 200, await r.text()
                assert all(result["status_code"] == 200 for result in await r.json())
        counts["rollouts"] += len(ids)


def otlp_request(attempts: list[tuple[str, str]]) -> bytes:
    """One OTLP request with the six spans of each ``(rollout_id, attempt_id)``."""
    if len(attempts) == 1:
        return otlp_body(*attempts[0])
    request = ExportTraceServiceRequest()
    for rollout_id, attempt_id in attempts:
        request.MergeFromString(otlp_body(rollout_id, attempt_id))  # repeated fields concatenate
    return request.SerializeToString()


def start_server(
    store_url: str, port: int, python_args: Sequence[str] = (), cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    """``agentbolt serve`` on ``port`` as a subprocess (``python_args`` go to the interpreter, e.g. cProfile's),
    returned once ``/health`` answers."""
    proc = subprocess.Popen(
        [sys.executable, *python_args, "-m", "agentbolt.cli", "serve", "--port", str(port), "--store", store_url],
        stdout=subprocess.DEVNULL,
        cwd=cwd,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("server did not start")


async def run_backend(name: str, store_url: str, rollouts: int, workers: int, batch: int) -> dict[str, object]:
    port = free_port()
    proc = start_server(store_url, port)
    server = psutil.Process(proc.pid)
    try:
        limits = httpx.Limits(max_connections=workers, max_keepalive_connections=workers)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", limits=limits, timeout=60) as client:
            for start in range(0, rollouts, 1000):
                chunk = [
                    {"input": {"i": i}, "group_id": f"g{i // 8}"} for i in range(start, min(rollouts, start + 1000))
                ]
                (await client.post("/api/rollouts/batch", json=chunk)).raise_for_status()
            counts = {"rollouts": 0}
            base = f"http://127.0.0.1:{port}"
            connector = aiohttp.TCPConnector(limit=workers)
            async with aiohttp.ClientSession(connector=connector) as session:
                cpu0, own0 = _cpu_s(server), time.process_time()
                t0 = time.perf_counter()
                await asyncio.gather(*(worker_loop(session, base, f"bench-{i}", batch, counts) for i in range(workers)))
                elapsed = time.perf_counter() - t0
                server_cpu, own_cpu = _cpu_s(server) - cpu0, time.process_time() - own0
            # Check the outcome, not just the clock: every rollout succeeded and every span is stored.
            page = (await client.get("/api/rollouts", params={"status": "succeeded", "limit": 1})).json()
            sample = (await client.get("/api/rollouts", params={"limit": 1, "offset": rollouts // 2})).json()
            spans = (await client.get(f"/api/rollouts/{sample['items'][0]['rollout_id']}/spans")).json()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert counts["rollouts"] == rollouts, counts
    assert page["total"] == rollouts, f"only {page['total']} of {rollouts} rollouts succeeded"
    assert spans["total"] == SPANS_PER_ROLLOUT, spans["total"]
    result = {
        "backend": name,
        "batch": batch,
        "rollouts": rollouts,
        "workers": workers,
        "spans_per_rollout": SPANS_PER_ROLLOUT,
        "seconds": round(elapsed, 3),
        "rollouts_per_s": round(rollouts / elapsed, 1),
        "spans_per_s": round(rollouts * SPANS_PER_ROLLOUT / elapsed, 1),
        "server_cpu_ms_per_rollout": round(1000 * server_cpu / rollouts, 3),
        "server_capacity_rollouts_per_s": round(rollouts / server_cpu, 1),
        "load_generator_cpu_ms_per_rollout": round(1000 * own_cpu / rollouts, 3),
    }
    print(
        f"{name:10s} batch {batch:3d}: {rollouts} rollouts, {workers} workers: {result['rollouts_per_s']} rollouts/s, "
        f"{result['spans_per_s']} spans/s ({elapsed:.2f} s); "
        f"server CPU {result['server_cpu_ms_per_rollout']} ms/rollout "
        f"(capacity {result['server_capacity_rollouts_per_s']}/s), load generator "
        f"{result['load_generator_cpu_ms_per_rollout']} ms/rollout"
    )
    return result


def _cpu_s(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


async def reset_pg(url: str) -> str:
    """A fresh database on the given PostgreSQL server, so runs do not see each other's rows."""
    import asyncpg
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    name = f"agentbolt_bench_{secrets.token_hex(4)}"
    conn = await asyncpg.connect(
        host=parsed.host, port=parsed.port, user=parsed.username, password=parsed.password, database=parsed.database
    )
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return parsed.set(database=name).render_as_string(hide_password=False)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rollouts", type=int, default=3000)
    parser.add_argument("--workers", type=int, default=32, help="concurrent client workers")
    parser.add_argument(
        "--batch", type=int, action="append", help="rollouts a worker claims, reports and finishes at once (1, 8)"
    )
    parser.add_argument("--pg-url", default=os.environ.get("AGENTBOLT_TEST_PG_URL"), help="also run on PostgreSQL")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "store_throughput.json")
    args = parser.parse_args()
    load_at_start = os.getloadavg()[0]  # figures taken on a busy machine are not comparable
    print(f"1-minute load average at start: {load_at_start:.2f}")

    results = []
    for batch in args.batch or [1, 8]:
        with tempfile.TemporaryDirectory() as tmp:
            url = f"sqlite:///{tmp}/bench.db"
            results.append(await run_backend("sqlite", url, args.rollouts, args.workers, batch))
        if args.pg_url:
            url = await reset_pg(args.pg_url)
            results.append(await run_backend("postgresql", url, args.rollouts, args.workers, batch))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    summary = {
        "benchmark": "store_throughput",
        "cpu_count": os.cpu_count(),
        "load_average_1m_at_start": round(load_at_start, 2),
        "results": results,
    }
    args.out.write_text(json.dumps(summary, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    asyncio.run(main())
