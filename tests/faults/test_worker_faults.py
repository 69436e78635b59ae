"""Worker faults against a real server (uvicorn on loopback, SQLite file) and real worker processes.

A worker killed outright, a finish whose connection drops, a worker stopped by SIGTERM: every rollout
still succeeds exactly once, and no span that reached the server is lost.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import httpx
import pytest

from agentbolt.client import Worker
from agentbolt.server.background import BackgroundServer
from agentbolt.types.queue import RELEASED_ERROR_TYPE
from tests.client import agents

from .common import enqueue, rollout, spans, start_worker, wait_until

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="sends POSIX signals")

# Long enough that the watchdog never ends an attempt during a test: only a release can requeue it.
NO_WATCHDOG = {"heartbeat_timeout_s": 600.0}


def _hanging_tasks(tmp_path: Path, n: int) -> list[dict[str, str]]:
    """Tasks for ``agents.hangs_on_first_try``: each first try hangs, each retry succeeds."""
    return [{"marker": str(tmp_path / f"first-try-{i}")} for i in range(n)]


def _first_try_sent(url: str, rollout_ids: list[str]) -> bool:
    return all(any(s["name"] == "agentbolt.message" for s in spans(url, r)) for r in rollout_ids)


def test_killed_worker_rollouts_all_succeed_on_retry_and_keep_the_killed_spans(
    server: BackgroundServer, tmp_path: Path
) -> None:
    config = {"heartbeat_timeout_s": 1.0, "max_attempts": 2, "retry_on": ["unresponsive"]}
    ids = enqueue(server.url, _hanging_tasks(tmp_path, 3), config=config)
    proc = start_worker(server.url, "agents:hangs_on_first_try", "-n", "3")
    try:
        wait_until("every first try sent its span", lambda: _first_try_sent(server.url, ids), proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()

    stats = Worker(agents.hangs_on_first_try, server.url, concurrency=3, max_rollouts=3, poll_wait_s=1).run_sync()
    assert stats.succeeded == 3
    for rollout_id in ids:
        done = rollout(server.url, rollout_id)
        assert done["status"] == "succeeded"
        killed, retried = done["attempts"]
        assert (killed["status"], retried["status"]) == ("unresponsive", "succeeded")
        texts = {
            s["attributes"].get("agentbolt.message.text")
            for s in spans(server.url, rollout_id)
            if s["attempt_id"] == killed["attempt_id"]
        }
        assert "first try, about to hang" in texts


class DropsFirstFinish(httpx.AsyncBaseTransport):
    """Loopback transport that loses the first finish: after the server answered it, or before sending it."""

    def __init__(self, after_server: bool) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.after_server = after_server
        self.finishes = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if not request.url.path.endswith("/finish"):
            return await self.inner.handle_async_request(request)
        self.finishes += 1
        if self.finishes == 1:
            if self.after_server:
                response = await self.inner.handle_async_request(request)
                await response.aread()  # the server has ended the attempt; its answer is lost
            raise httpx.ReadError("connection dropped", request=request)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.mark.parametrize("after_server", [True, False], ids=["after-the-server-finished", "before-it-arrived"])
def test_dropped_finish_is_retried_and_the_attempt_succeeds_once(server: BackgroundServer, after_server: bool) -> None:
    [rollout_id] = enqueue(server.url, [{"id": 1, "a": 2, "b": 2, "expected": 4}], config={"max_attempts": 1})
    transport = DropsFirstFinish(after_server)
    stats = Worker(agents.arithmetic, server.url, max_rollouts=1, transport=transport).run_sync()
    assert transport.finishes == 2
    assert (stats.succeeded, stats.finish_refused) == (1, 0)
    done = rollout(server.url, rollout_id)
    assert done["status"] == "succeeded"
    assert done["reward"] == 1.0
    assert [a["status"] for a in done["attempts"]] == ["succeeded"]


def test_repeated_finish_answers_the_rollout_but_a_different_one_is_refused(server: BackgroundServer) -> None:
    [rollout_id] = enqueue(server.url, ["t"])
    claim = httpx.post(f"{server.url}/api/dequeue", json={"worker_id": "w"}).json()
    finish = f"{server.url}/api/rollouts/{rollout_id}/attempts/{claim['attempt']['attempt_id']}/finish"
    first = httpx.post(finish, json={"status": "succeeded", "reward": 0.5})
    again = httpx.post(finish, json={"status": "succeeded", "reward": 0.5})
    assert first.status_code == again.status_code == 200
    assert again.json()["status"] == "succeeded"
    assert again.json()["reward"] == 0.5
    assert httpx.post(finish, json={"status": "failed"}).status_code == 409


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stop_signal_releases_running_attempts_and_their_rollouts_are_requeued_at_once(
    server: BackgroundServer, tmp_path: Path, sig: signal.Signals
) -> None:
    # One attempt allowed and no retry on failure: only a release, which does not count, lets them run again.
    config = {**NO_WATCHDOG, "max_attempts": 1, "retry_on": []}
    ids = enqueue(server.url, _hanging_tasks(tmp_path, 2), config=config)
    proc = start_worker(server.url, "agents:hangs_on_first_try", "-n", "2", "--shutdown-grace", "0.2")
    try:
        wait_until("every first try sent its span", lambda: _first_try_sent(server.url, ids), proc)
        proc.send_signal(sig)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()

    for rollout_id in ids:
        requeued = rollout(server.url, rollout_id)
        assert requeued["status"] == "queuing"
        [released] = requeued["attempts"]
        assert released["status"] == "failed"
        assert released["error"]["type"] == RELEASED_ERROR_TYPE
        root = next(
            s
            for s in spans(server.url, rollout_id)
            if s["name"] == "agentbolt.attempt" and s["attempt_id"] == released["attempt_id"]
        )
        assert root["status"]["code"] == "ERROR"
        assert "released" in root["status"]["message"]

    stats = Worker(agents.hangs_on_first_try, server.url, concurrency=2, max_rollouts=2, poll_wait_s=1).run_sync()
    assert stats.succeeded == 2
    for rollout_id in ids:
        done = rollout(server.url, rollout_id)
        assert done["status"] == "succeeded"
        assert [a["status"] for a in done["attempts"]] == ["failed", "succeeded"]


def test_release_is_idempotent_and_refused_for_a_finished_attempt(server: BackgroundServer) -> None:
    [rollout_id] = enqueue(server.url, ["t"], config={"max_attempts": 1})
    claim = httpx.post(f"{server.url}/api/dequeue", json={"worker_id": "w"}).json()
    base = f"{server.url}/api/rollouts/{rollout_id}/attempts/{claim['attempt']['attempt_id']}"
    assert httpx.post(f"{base}/release", json={"worker_id": "other"}).status_code == 409
    first = httpx.post(f"{base}/release", json={"worker_id": "w"})
    again = httpx.post(f"{base}/release", json={"worker_id": "w"})
    assert first.status_code == again.status_code == 200
    assert again.json()["status"] == "queuing"
    assert httpx.post(f"{base}/finish", json={"status": "succeeded"}).status_code == 409
    second = httpx.post(f"{server.url}/api/dequeue", json={"worker_id": "w"}).json()
    assert second["attempt"]["number"] == 2
