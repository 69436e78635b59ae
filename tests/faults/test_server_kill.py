"""``agentbolt serve`` killed outright (SIGKILL) under load, then restarted on the same SQLite file.

A client thread enqueues rollouts, claims them, posts their spans over OTLP/HTTP (JSON) and finishes them,
recording what the server acknowledged. After the kill and a restart, everything acknowledged is there
(a 2xx means committed), and the database passes SQLite's integrity check.
"""

from __future__ import annotations

import secrets
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from agentbolt.server.background import free_port

from .common import rollout, spans, wait_until

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="sends SIGKILL")

SPANS_PER_REQUEST = 3


def _serve(port: int, db: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "agentbolt.cli", "serve", "--port", str(port), "--store", f"sqlite:///{db}"],
        stdout=subprocess.DEVNULL,
    )

    def healthy() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    wait_until("the server answers /health", healthy, proc)
    return proc


def _otlp_json(rollout_id: str, attempt_id: str) -> tuple[dict[str, Any], list[str]]:
    trace_id, now = secrets.token_hex(16), time.time_ns()
    span_ids = [secrets.token_hex(8) for _ in range(SPANS_PER_REQUEST)]
    ids = [
        {"key": "agentbolt.rollout_id", "value": {"stringValue": rollout_id}},
        {"key": "agentbolt.attempt_id", "value": {"stringValue": attempt_id}},
    ]
    otlp = [
        {
            "traceId": trace_id,
            "spanId": span_id,
            "name": f"step {i}",
            "kind": 1,
            "startTimeUnixNano": str(now + i),
            "endTimeUnixNano": str(now + i + 1),
            "attributes": ids,
        }
        for i, span_id in enumerate(span_ids)
    ]
    return {"resourceSpans": [{"scopeSpans": [{"spans": otlp}]}]}, span_ids


@dataclass
class Acknowledged:
    """What the server answered 2xx to, by rollout id."""

    rollouts: set[str] = field(default_factory=set)
    finished: set[str] = field(default_factory=set)
    span_ids: dict[str, set[str]] = field(default_factory=dict)


def _load(url: str, acked: Acknowledged, stop: threading.Event) -> None:
    """One rollout after another: enqueue, claim, two span requests, finish; stop at the first failure."""
    with httpx.Client(base_url=url, timeout=10) as http:
        try:
            while not stop.is_set():
                r = http.post("/api/rollouts", json={"input": "load"})
                r.raise_for_status()
                rollout_id = r.json()["rollout_id"]
                acked.rollouts.add(rollout_id)
                claim = http.post("/api/dequeue", json={"worker_id": "load"})
                claim.raise_for_status()
                attempt_id = claim.json()["attempt"]["attempt_id"]
                for _ in range(2):
                    body, span_ids = _otlp_json(rollout_id, attempt_id)
                    http.post("/v1/traces", json=body).raise_for_status()
                    acked.span_ids.setdefault(rollout_id, set()).update(span_ids)
                http.post(
                    f"/api/rollouts/{rollout_id}/attempts/{attempt_id}/finish", json={"status": "succeeded"}
                ).raise_for_status()
                acked.finished.add(rollout_id)
        except httpx.HTTPError:
            return  # the server was killed


def test_everything_acknowledged_survives_a_server_kill(tmp_path: Path) -> None:
    db, port = tmp_path / "server.db", free_port()
    url = f"http://127.0.0.1:{port}"
    server = _serve(port, db)
    acked, stop = Acknowledged(), threading.Event()
    load = threading.Thread(target=_load, args=(url, acked, stop), daemon=True)
    try:
        load.start()
        wait_until("the load has finished some rollouts", lambda: len(acked.finished) >= 20)
        server.send_signal(signal.SIGKILL)
        server.wait(timeout=30)
        stop.set()
        load.join(timeout=60)
        assert not load.is_alive()
        server = _serve(port, db)

        assert acked.rollouts and acked.finished
        for rollout_id in acked.rollouts:
            stored = rollout(url, rollout_id)  # 404 (raised) if an acknowledged rollout were lost
            if rollout_id in acked.finished:
                assert stored["status"] == "succeeded"
            stored_span_ids = {s["span_id"] for s in spans(url, rollout_id)}
            assert acked.span_ids.get(rollout_id, set()) <= stored_span_ids
    finally:
        stop.set()
        if server.poll() is None:
            server.terminate()
            server.wait(timeout=30)

    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
