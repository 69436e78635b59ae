"""The Lightning Client against a real server: agents run, spans land in the right attempt."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from agentbolt.client import Worker
from agentbolt.server.background import BackgroundServer

from . import agents

HERE = Path(__file__).parent


def _enqueue(url: str, inputs: list[Any], **fields: Any) -> list[str]:
    body = [{"input": x, **fields} for x in inputs]
    r = httpx.post(f"{url}/api/rollouts/batch", json=body)
    r.raise_for_status()
    return [x["rollout_id"] for x in r.json()]


def _rollout(url: str, rollout_id: str) -> dict[str, Any]:
    return httpx.get(f"{url}/api/rollouts/{rollout_id}").json()


def _spans(url: str, rollout_id: str) -> list[dict[str, Any]]:
    return httpx.get(f"{url}/api/rollouts/{rollout_id}/spans").json()["items"]


def _run(worker: Worker) -> Any:
    return worker.run_sync()


def test_agent_reward_tools_and_third_party_spans_land_in_the_attempt(server: BackgroundServer) -> None:
    tasks = [{"id": i, "a": i, "b": 1, "expected": i + 1 if i % 2 else 0, "bad_tool": i == 3} for i in range(8)]
    ids = _enqueue(server.url, tasks)
    stats = _run(Worker(agents.arithmetic, server.url, concurrency=4, max_rollouts=8))
    assert stats.succeeded == 8

    for rollout_id, task in zip(ids, tasks, strict=True):
        rollout = _rollout(server.url, rollout_id)
        assert rollout["status"] == "succeeded"
        assert rollout["reward"] == (1.0 if task["id"] % 2 else 0.0)
        attempt_id = rollout["attempts"][0]["attempt_id"]
        spans = _spans(server.url, rollout_id)
        assert {s["attempt_id"] for s in spans} == {attempt_id}
        by_name = {s["name"]: s for s in spans}
        # Each rollout's spans are its own, even with 4 running at once in one process.
        annotation = by_name["agentbolt.annotation"]["attributes"]
        assert annotation["agentbolt.annotation.task_id"] == task["id"]
        assert annotation["agentbolt.annotation.base_url"].endswith(f"/rollouts/{rollout_id}/attempts/{attempt_id}/v1")
        assert by_name["execute_tool add"]["attributes"]["agentbolt.tool.success"] is True
        assert by_name["execute_tool add"]["attributes"]["gen_ai.tool.call.id"] == "call-1"
        assert "http GET /search" in by_name
        assert by_name["agentbolt.reward"]["attributes"]["agentbolt.reward.final"] is True
        root = by_name["agentbolt.attempt"]
        assert by_name["invoke_agent solver"]["parent_id"] == root["span_id"]
        assert by_name["execute_tool add"]["parent_id"] == by_name["invoke_agent solver"]["span_id"]
        if task["bad_tool"]:
            lookup = by_name["execute_tool lookup"]
            assert lookup["attributes"]["agentbolt.tool.success"] is False
            assert lookup["status"] == {"code": "ERROR", "message": "no such page"}


def test_async_agent_with_intermediate_and_dimensional_rewards(server: BackgroundServer) -> None:
    [rollout_id] = _enqueue(server.url, ["t"])
    stats = _run(Worker(agents.async_with_dimensions, server.url, max_rollouts=1))
    assert stats.succeeded == 1
    assert _rollout(server.url, rollout_id)["reward"] == 1.0  # the final reward's primary dimension
    rewards = [s for s in _spans(server.url, rollout_id) if s["name"] == "agentbolt.reward"]
    assert [r["attributes"]["agentbolt.reward.final"] for r in rewards] == [False, True]
    assert json.loads(rewards[1]["attributes"]["agentbolt.reward.dimensions"]) == {"correct": 1.0, "format": 0.5}
    assert any(s["name"] == "agentbolt.message" for s in _spans(server.url, rollout_id))


def test_agent_exception_fails_the_attempt_with_details(server: BackgroundServer) -> None:
    [rollout_id] = _enqueue(server.url, ["task-7"])
    stats = _run(Worker(agents.raises, server.url, max_rollouts=1))
    assert stats.failed == 1
    rollout = _rollout(server.url, rollout_id)
    assert rollout["status"] == "failed"
    error = rollout["attempts"][0]["error"]
    assert error["type"] == "RuntimeError"
    assert error["message"] == "tool crashed on task-7"
    assert "raise RuntimeError" in error["traceback"]
    root = next(s for s in _spans(server.url, rollout_id) if s["name"] == "agentbolt.attempt")
    assert root["status"]["code"] == "ERROR"
    assert root["events"][0]["name"] == "exception"


def test_agent_returning_a_non_number_fails_with_a_clear_message(server: BackgroundServer) -> None:
    [rollout_id] = _enqueue(server.url, [1])
    _run(Worker(agents.returns_text, server.url, max_rollouts=1))
    error = _rollout(server.url, rollout_id)["attempts"][0]["error"]
    assert error["type"] == "TypeError"
    assert "return a number" in error["message"]


def test_attempt_past_its_timeout_is_ended_by_the_server(server: BackgroundServer) -> None:
    [rollout_id] = _enqueue(server.url, [2.0], config={"timeout_s": 0.5})
    stats = _run(Worker(agents.sleeps, server.url, max_rollouts=1))
    assert stats.abandoned == 1
    deadline = time.monotonic() + 10
    while _rollout(server.url, rollout_id)["status"] != "failed" and time.monotonic() < deadline:
        time.sleep(0.1)
    rollout = _rollout(server.url, rollout_id)
    assert rollout["status"] == "failed"
    assert rollout["attempts"][0]["status"] == "timeout"


def test_heartbeats_keep_an_attempt_longer_than_its_heartbeat_timeout_alive(server: BackgroundServer) -> None:
    [rollout_id] = _enqueue(server.url, [1.5], config={"heartbeat_timeout_s": 0.6})
    stats = _run(Worker(agents.sleeps, server.url, max_rollouts=1))
    assert stats.succeeded == 1
    rollout = _rollout(server.url, rollout_id)
    [attempt] = rollout["attempts"]
    assert attempt["status"] == "succeeded"
    assert attempt["last_heartbeat_at"] > attempt["started_at"] + 0.5  # beats went on while the agent slept


def test_worker_stops_when_idle(server: BackgroundServer) -> None:
    stats = _run(Worker(agents.sleeps, server.url, idle_exit_s=0.3, poll_wait_s=0.1))
    assert stats.claimed == 0


@pytest.mark.skipif(sys.platform == "win32", reason="uses SIGKILL")
def test_killed_worker_attempt_is_retried_and_its_spans_kept(server: BackgroundServer, tmp_path: Path) -> None:
    marker = tmp_path / "first-try"
    config = {"heartbeat_timeout_s": 1.0, "max_attempts": 2, "retry_on": ["unresponsive"]}
    [rollout_id] = _enqueue(server.url, [{"marker": str(marker)}], config=config)
    env = {**os.environ, "PYTHONPATH": str(HERE)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "agentbolt.cli", "worker", "agents:hangs_on_first_try", "--server", server.url],
        cwd=HERE,
        env=env,
    )
    try:
        deadline = time.monotonic() + 30
        # Wait until the first try's span reached the server, then kill the worker outright.
        while not _spans(server.url, rollout_id):
            assert time.monotonic() < deadline, "the worker never sent a span"
            assert proc.poll() is None, "the worker exited early"
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()

    stats = _run(Worker(agents.hangs_on_first_try, server.url, max_rollouts=1, poll_wait_s=1))
    assert stats.succeeded == 1
    rollout = _rollout(server.url, rollout_id)
    assert rollout["status"] == "succeeded"
    first, second = rollout["attempts"]
    assert first["status"] == "unresponsive"
    assert second["status"] == "succeeded"
    spans = _spans(server.url, rollout_id)
    first_texts = [
        s["attributes"].get("agentbolt.message.text") for s in spans if s["attempt_id"] == first["attempt_id"]
    ]
    assert "first try, about to hang" in first_texts
    assert any(s["attempt_id"] == second["attempt_id"] for s in spans)


def test_cli_worker_runs_an_agent_from_module_and_function(server: BackgroundServer) -> None:
    ids = _enqueue(server.url, [{"id": 1, "a": 1, "b": 2, "expected": 3}])
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "agentbolt.cli",
            "worker",
            "agents:arithmetic",
            "--server",
            server.url,
            "--max-rollouts",
            "1",
        ],
        cwd=HERE,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "1 succeeded" in result.stdout
    assert _rollout(server.url, ids[0])["reward"] == 1.0
