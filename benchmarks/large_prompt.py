"""A huge prompt must not stall the server: latency of the refusal, /health meanwhile, and server memory.

Starts `agentbolt serve --model tiny` on loopback and sends ``--requests`` chat requests whose one message is
``--mb`` MB of text (far over the context window), each while a thread polls ``/health``. Prints each
request's status, code and time, the slowest ``/health`` answer during it, and the server's RSS before and
after; writes benchmarks/results/large_prompt.json.

    python benchmarks/large_prompt.py
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from agentbolt.server.background import free_port

ROOT = Path(__file__).resolve().parents[1]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=10.0, help="size of the one message, in MB")
    parser.add_argument("--requests", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "large_prompt.json")
    args = parser.parse_args()

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "agentbolt", "serve", "--model", "tiny", "--port", str(port),
                   "--store", f"sqlite:///{tmp}/large.db"]  # fmt: skip
        server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if httpx.get(f"{url}/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("server did not start")
                time.sleep(0.2)
            body = {"model": "policy", "max_tokens": 4,
                    "messages": [{"role": "user", "content": "x " * int(args.mb * 500_000)}]}  # fmt: skip
            rss_before = rss_mib(server.pid)
            print(f"server RSS before: {rss_before:.0f} MiB")
            rows = []
            for i in range(args.requests):
                health: list[float] = []
                done = threading.Event()

                def probe(health: list[float] = health, done: threading.Event = done) -> None:
                    while not done.is_set():
                        started = time.monotonic()
                        httpx.get(f"{url}/health", timeout=60)
                        health.append(time.monotonic() - started)
                        time.sleep(0.02)

                prober = threading.Thread(target=probe)
                prober.start()
                started = time.monotonic()
                response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=300)
                elapsed = time.monotonic() - started
                done.set()
                prober.join()
                code = response.json().get("error", {}).get("code") if response.status_code >= 400 else None
                row = {"status": response.status_code, "code": code, "seconds": elapsed,
                       "health_max_ms": 1000 * max(health, default=0.0), "rss_mib": rss_mib(server.pid)}  # fmt: skip
                rows.append(row)
                print(f"request {i}: {row['status']} {code or ''} in {elapsed:.2f} s; /health at most "
                      f"{row['health_max_ms']:.0f} ms meanwhile; server RSS {row['rss_mib']:.0f} MiB")  # fmt: skip
            time.sleep(2)
            rss_after = rss_mib(server.pid)
        finally:
            server.terminate()
            server.wait(timeout=30)
    print(f"server RSS {rss_before:.0f} -> {rss_after:.0f} MiB after {args.requests} requests of {args.mb:g} MB")
    figures = {"benchmark": "large_prompt", "mb": args.mb, "requests": rows,
               "rss_before_mib": rss_before, "rss_after_mib": rss_after}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2))
    print(f"wrote {args.out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
