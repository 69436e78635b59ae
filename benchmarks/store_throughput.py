"""Store throughput through a real server: concurrent workers doing dequeue → 6 spans → finish over HTTP.

Starts ``agentbolt serve`` as a separate process on loopback (SQLite file; PostgreSQL too when a URL is
given), enqueues the rollouts, then runs ``--workers`` concurrent client loops in this process. Each loop
claims a rollout, sends its 6 spans as one OTLP/HTTP protobuf request (as the OTel batch exporter does),
and finishes the attempt. The load generator uses aiohttp rather than agentbolt's httpx-based client:
on 2 cores, httpx's own CPU cost per request capped the measurement near 100 rollouts/s (the server
was half idle), so the figure would have measured the client, not the server and store.

Prints rollouts/s and spans/s per backend, checks that every rollout succeeded and every span was
stored, and writes JSON to benchmarks/results/.

    python benchmarks/store_throughput.py                       # SQLite
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


async def worker_loop(session: aiohttp.ClientSession, base: str, worker_id: str, counts: dict[str, int]) -> None:
    protobuf = {"content-type": "application/x-protobuf"}
    while True:
        async with session.post(f"{base}/api/dequeue", json={"worker_id": worker_id}) as r:
            if r.status == 204:
                return
            assert r.status == 200, await r.text()
            claim = await r.json()
        rollout_id, attempt_id = claim["rollout"]["rollout_id"], claim["attempt"]["attempt_id"]
        async with session.post(f"{base}/v1/traces", data=otlp_body(rollout_id, attempt_id), headers=protobuf) as r:
            assert r.status == 200, await r.text()
            await r.read()
        finish = f"{base}/api/rollouts/{rollout_id}/attempts/{attempt_id}/finish"
        async with session.post(finish, json={"status": "succeeded", "reward": 1.0}) as r:
            assert r.status == 200, await r.text()
            await r.read()
        counts["rollouts"] += 1


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


async def run_backend(name: str, store_url: str, rollouts: int, workers: int) -> dict[str, object]:
    port = free_port()
    proc = start_server(store_url, port)
    try:
        limits = httpx.Limits(max_connections=workers, max_keepalive_connections=workers)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", limits=limits, timeout=60) as client:
            for start in range(0, rollouts, 1000):
                batch = [
                    {"input": {"i": i}, "group_id": f"g{i // 8}"} for i in range(start, min(rollouts, start + 1000))
                ]
                (await client.post("/api/rollouts/batch", json=batch)).raise_for_status()
            counts = {"rollouts": 0}
            base = f"http://127.0.0.1:{port}"
            connector = aiohttp.TCPConnector(limit=workers)
            async with aiohttp.ClientSession(connector=connector) as session:
                t0 = time.perf_counter()
                await asyncio.gather(*(worker_loop(session, base, f"bench-{i}", counts) for i in range(workers)))
                elapsed = time.perf_counter() - t0
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
        "rollouts": rollouts,
        "workers": workers,
        "spans_per_rollout": SPANS_PER_ROLLOUT,
        "seconds": round(elapsed, 3),
        "rollouts_per_s": round(rollouts / elapsed, 1),
        "spans_per_s": round(rollouts * SPANS_PER_ROLLOUT / elapsed, 1),
    }
    print(
        f"{name:10s} {rollouts} rollouts, {workers} workers: {result['rollouts_per_s']} rollouts/s, "
        f"{result['spans_per_s']} spans/s ({elapsed:.2f} s)"
    )
    return result


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
    parser.add_argument("--pg-url", default=os.environ.get("AGENTBOLT_TEST_PG_URL"), help="also run on PostgreSQL")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "store_throughput.json")
    args = parser.parse_args()

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        results.append(await run_backend("sqlite", f"sqlite:///{tmp}/bench.db", args.rollouts, args.workers))
    if args.pg_url:
        results.append(await run_backend("postgresql", await reset_pg(args.pg_url), args.rollouts, args.workers))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"benchmark": "store_throughput", "cpu_count": os.cpu_count(), "results": results}, indent=2)
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    asyncio.run(main())
