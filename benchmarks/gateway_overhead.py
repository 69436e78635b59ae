"""Latency the gateway adds (recording on) over calling the same upstream directly, and its throughput.

Three processes on loopback:

- a fast fake vLLM-style upstream (``tests/gateway/fake_upstream.py``: a bare asyncio HTTP server that
  answers ``/v1/chat/completions`` and ``/v1/completions`` at once with a fixed 8-token reply, token ids
  included);
- the agentbolt server with its gateway in front of that upstream (``create_app(config, backend=
  UpstreamBackend([...]))`` under uvicorn, as ``agentbolt serve`` runs it; SQLite store; every call
  recorded as a span of a real rollout attempt, via ``/rollouts/{rid}/attempts/{aid}/v1``);
- this process, the load generator (aiohttp: it costs less CPU per request than httpx or the openai
  client, so the figures measure the servers, not the client).

It measures chat completions (a) straight to the fake upstream and (b) through the gateway: sequentially
(p50/p99 latency; overhead = difference of the p50s and of the p99s), then with ``--clients`` concurrent
clients (p50/p99, requests/s). It checks every reply, and that the gateway stored one span per call.
Prints a table and writes JSON to benchmarks/results/gateway_overhead.json.

``--span-durability`` chooses when the gateway stores a call's spans (``ServerConfig.span_durability``):
``auto`` (the default; on this SQLite store: ``finish``, the answer goes out first) or ``answer`` (the
answer waits for the grouped commit, as on PostgreSQL), to measure what waiting costs.

    python benchmarks/gateway_overhead.py                    # 2000 sequential + 4000 concurrent calls each
    python benchmarks/gateway_overhead.py --requests 500     # quicker
    python benchmarks/gateway_overhead.py --span-durability answer
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script: make `agentbolt` and `tests` importable from the checkout

from agentbolt.server.background import free_port  # noqa: E402

# SmolLM2's ids of "The capital of France is Paris." + <|im_end|>: what the fake upstream "samples".
REPLY_IDS = [504, 3575, 282, 4649, 314, 7042, 30, 2]
REPLY_TEXT = "The capital of France is Paris."
CHAT = {
    "model": "policy",
    "messages": [
        {"role": "system", "content": "You are a helpful assistant. Answer in one sentence."},
        {"role": "user", "content": "What is the capital of France?"},
    ],
    "max_tokens": 32,
    "temperature": 0.7,
}


# --- the gateway process ---------------------------------------------------------------------------------


def serve_gateway(port: int, upstream: str, store_url: str, span_durability: str) -> None:
    """Run the agentbolt server with an UpstreamBackend, as ``agentbolt serve`` would (this is the child)."""
    import uvicorn

    from agentbolt.gateway.upstream import UpstreamBackend
    from agentbolt.models import load_tokenizer
    from agentbolt.server.app import create_app
    from agentbolt.types import ServerConfig

    config = ServerConfig(host="127.0.0.1", port=port, store_url=store_url, served_model="policy")
    if span_durability != "auto":  # (a checkout from before span durability has no such setting)
        config = config.model_copy(update={"span_durability": span_durability})
    backend = UpstreamBackend([upstream], load_tokenizer("demo"), "policy", upstream_model="fake")
    if "backend" in inspect.signature(create_app).parameters:
        app = create_app(config, backend=backend)
    else:  # a gateway wired through the config only
        config = config.model_copy(update={"upstream_urls": [upstream], "model": "demo", "upstream_model": "fake"})
        app = create_app(config)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def start(cmd: list[str], health_url: str, what: str, timeout_s: float = 120) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode} (see the output above)")
        try:
            if httpx.get(health_url, timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"{what} did not start within {timeout_s}s")


# --- the load generator ----------------------------------------------------------------------------------


async def call(session: aiohttp.ClientSession, url: str, body: bytes) -> float:
    """One chat completion; returns its latency in seconds after checking the reply."""
    headers = {"content-type": "application/json"}
    t0 = time.perf_counter()
    async with session.post(url, data=body, headers=headers) as response:
        payload = await response.read()
    elapsed = time.perf_counter() - t0
    if response.status != 200:
        raise RuntimeError(f"{url} answered {response.status}: {payload[:500]!r}")
    content = json.loads(payload)["choices"][0]["message"]["content"]
    if content != REPLY_TEXT:
        raise RuntimeError(f"{url} replied {content!r}, expected {REPLY_TEXT!r}")
    return elapsed


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run(url: str, requests: int, clients: int, warmup: int, pids: dict[str, int]) -> dict[str, float]:
    """``requests`` calls from ``clients`` concurrent loops (after ``warmup`` calls): latency percentiles, req/s,
    and the CPU each process in ``pids`` spent per call (robust to other load on the machine)."""
    body = json.dumps(CHAT).encode()
    connector = aiohttp.TCPConnector(limit=clients, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(call(session, url, body) for _ in range(warmup)))
        latencies: list[float] = []
        remaining = requests

        async def loop() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                latencies.append(await call(session, url, body))

        cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
        t0 = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(clients)))
        elapsed = time.perf_counter() - t0
        cpu = {
            f"{name}_cpu_ms_per_call": (cpu_seconds(pid) - cpu0[name]) * 1000 / requests for name, pid in pids.items()
        }
    latencies.sort()
    return {
        **{k: round(v, 3) for k, v in cpu.items()},
        "requests": len(latencies),
        "clients": clients,
        "p50_ms": round(percentile(latencies, 50) * 1000, 3),
        "p99_ms": round(percentile(latencies, 99) * 1000, 3),
        "mean_ms": round(statistics.fmean(latencies) * 1000, 3),
        "requests_per_s": round(len(latencies) / elapsed, 1),
    }


def percentile(sorted_values: list[float], p: float) -> float:
    k = min(len(sorted_values) - 1, max(0, round(p / 100 * (len(sorted_values) - 1))))
    return sorted_values[k]


async def attempt_of(base: str) -> tuple[str, str]:
    """A real rollout attempt for the gateway calls to be attributed to (no timeouts: the run is long)."""
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        rollout = {"input": {"bench": "gateway_overhead"}, "config": {"timeout_s": None, "heartbeat_timeout_s": None}}
        (await client.post("/api/rollouts", json=rollout)).raise_for_status()
        claim = (await client.post("/api/dequeue", json={"worker_id": "gateway-bench"})).json()
    return claim["rollout"]["rollout_id"], claim["attempt"]["attempt_id"]


async def span_durability_of(base: str) -> str:
    """When the gateway stores a call's spans, as its stats report it (older checkouts: always finish)."""
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        stats = (await client.get("/api/gateway/stats")).json()
    return str(stats.get("span_durability", "finish"))


async def spans_stored(base: str, rollout_id: str, expected: int, timeout_s: float = 30) -> int:
    """Spans of the rollout once the store holds ``expected`` (recording may lag the replies a little)."""
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        deadline = time.monotonic() + timeout_s
        while True:
            page = (await client.get(f"/api/rollouts/{rollout_id}/spans", params={"limit": 1})).json()
            total = int(page["total"])
            if total >= expected or time.monotonic() > deadline:
                return total
            await asyncio.sleep(0.2)


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="sequential calls per target")
    parser.add_argument("--concurrent-requests", type=int, default=4000, help="concurrent calls per target")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument(
        "--span-durability",
        choices=["auto", "answer", "finish"],
        default="auto",
        help="when the gateway stores a call's spans (auto on SQLite: finish)",
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "gateway_overhead.json")
    parser.add_argument("--serve-gateway", nargs=3, metavar=("PORT", "UPSTREAM", "STORE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_gateway:
        port, upstream, store_url = args.serve_gateway
        serve_gateway(int(port), upstream, store_url, args.span_durability)
    else:
        asyncio.run(main(args))


async def main(args: argparse.Namespace) -> None:

    load_before = os.getloadavg()[0]  # the machine may be shared: the figures are only as good as it was idle
    upstream_port, gateway_port = free_port(), free_port()
    upstream = f"http://127.0.0.1:{upstream_port}/v1"
    gateway = f"http://127.0.0.1:{gateway_port}"
    ids = ",".join(map(str, REPLY_IDS))
    with tempfile.TemporaryDirectory() as tmp:
        store_url = f"sqlite:///{tmp}/bench.db"
        procs: list[subprocess.Popen[bytes]] = []
        try:
            fake_cmd = [sys.executable, "-m", "tests.gateway.fake_upstream", "--port", str(upstream_port)]
            fake_cmd += ["--reply-ids", ids, "--reply-text", REPLY_TEXT + "<|im_end|>", "--chat-text", REPLY_TEXT]
            procs.append(start(fake_cmd, f"{upstream}/models", "the fake upstream"))
            gateway_cmd = [sys.executable, __file__, "--serve-gateway", str(gateway_port), upstream, store_url]
            gateway_cmd += ["--span-durability", args.span_durability]
            procs.append(start(gateway_cmd, f"{gateway}/health", "the gateway"))
            rollout_id, attempt_id = await attempt_of(gateway)
            span_durability = await span_durability_of(gateway)
            direct_url = f"{upstream}/chat/completions"
            gateway_url = f"{gateway}/rollouts/{rollout_id}/attempts/{attempt_id}/v1/chat/completions"

            pids = {"upstream": procs[0].pid, "gateway": procs[1].pid, "client": os.getpid()}
            results: dict[str, dict[str, float]] = {}
            for name, url in (("direct", direct_url), ("gateway", gateway_url)):
                results[f"{name}_sequential"] = await run(url, args.requests, 1, args.warmup, pids)
                results[f"{name}_concurrent"] = await run(
                    url, args.concurrent_requests, args.clients, args.warmup, pids
                )
            gateway_calls = args.requests + args.concurrent_requests + 2 * args.warmup
            stored = await spans_stored(gateway, rollout_id, gateway_calls)
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(timeout=30)
    if stored != gateway_calls:
        raise RuntimeError(f"the gateway stored {stored} spans for {gateway_calls} calls")

    report(results)
    seq_d, seq_g = results["direct_sequential"], results["gateway_sequential"]
    con_d, con_g = results["direct_concurrent"], results["gateway_concurrent"]
    summary = {
        "overhead_p50_ms": round(seq_g["p50_ms"] - seq_d["p50_ms"], 3),
        "overhead_p99_ms": round(seq_g["p99_ms"] - seq_d["p99_ms"], 3),
        "concurrent_overhead_p50_ms": round(con_g["p50_ms"] - con_d["p50_ms"], 3),
        "concurrent_overhead_p99_ms": round(con_g["p99_ms"] - con_d["p99_ms"], 3),
        "gateway_requests_per_s": con_g["requests_per_s"],
        "spans_stored": stored,
        "span_durability": span_durability,
        "load_average_1min": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
        "targets": {"overhead_p50_ms": 1.5, "gateway_requests_per_s": 540},
    }
    print(
        f"\noverhead (sequential): p50 {summary['overhead_p50_ms']} ms, p99 {summary['overhead_p99_ms']} ms"
        f"   (target: p50 < 1.5 ms)\n"
        f"overhead ({args.clients} clients): p50 {summary['concurrent_overhead_p50_ms']} ms, "
        f"p99 {summary['concurrent_overhead_p99_ms']} ms\n"
        f"through the gateway with {args.clients} clients: {summary['gateway_requests_per_s']} req/s"
        f"   (target: >= 540 req/s)\n"
        f"spans stored: {stored} of {gateway_calls} calls (span durability: {span_durability})\n"
        f"1-min load average: {summary['load_average_1min']} on {os.cpu_count()} CPUs (other load skews the figures)"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {"benchmark": "gateway_overhead", "cpu_count": os.cpu_count(), "summary": summary, "results": results},
            indent=2,
        )
    )
    print(f"wrote {args.out}")


def report(results: dict[str, dict[str, float]]) -> None:
    print(
        f"{'target':20s} {'clients':>7s} {'calls':>6s} {'p50 ms':>7s} {'p99 ms':>7s} {'mean ms':>7s} {'req/s':>7s}"
        f"   CPU ms per call: {'upstream':>8s} {'gateway':>8s} {'client':>8s}"
    )
    for name, r in results.items():
        print(
            f"{name:20s} {r['clients']:7d} {r['requests']:6d} {r['p50_ms']:7.3f} {r['p99_ms']:7.3f} "
            f"{r['mean_ms']:7.3f} {r['requests_per_s']:7.1f}{'':20s}"
            f"{r['upstream_cpu_ms_per_call']:8.3f} {r['gateway_cpu_ms_per_call']:8.3f} "
            f"{r['client_cpu_ms_per_call']:8.3f}"
        )


if __name__ == "__main__":
    cli()
