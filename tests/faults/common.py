"""What the fault tests share: a real ``agentbolt serve`` / ``agentbolt worker`` subprocess, queue calls."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

CLIENT_TESTS = Path(__file__).parent.parent / "client"  # where the agents the workers run live
WAIT_S = 60.0  # generous: the machine running the tests may be loaded


def enqueue(url: str, inputs: list[Any], **fields: Any) -> list[str]:
    r = httpx.post(f"{url}/api/rollouts/batch", json=[{"input": x, **fields} for x in inputs])
    r.raise_for_status()
    return [x["rollout_id"] for x in r.json()]


def rollout(url: str, rollout_id: str) -> dict[str, Any]:
    r = httpx.get(f"{url}/api/rollouts/{rollout_id}")
    r.raise_for_status()
    result: dict[str, Any] = r.json()
    return result


def spans(url: str, rollout_id: str) -> list[dict[str, Any]]:
    r = httpx.get(f"{url}/api/rollouts/{rollout_id}/spans", params={"limit": 10_000})
    r.raise_for_status()
    items: list[dict[str, Any]] = r.json()["items"]
    return items


def start_worker(url: str, agent: str, *args: str) -> subprocess.Popen[bytes]:
    """``agentbolt worker AGENT`` (an agent of tests/client/agents.py) as a separate process."""
    return subprocess.Popen(
        [sys.executable, "-m", "agentbolt.cli", "worker", agent, "--server", url, *args],
        cwd=CLIENT_TESTS,
        env={**os.environ, "PYTHONPATH": str(CLIENT_TESTS)},
    )


def wait_until(what: str, check: Any, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Poll ``check()`` until it is true; fail after :data:`WAIT_S` or when ``proc`` exits."""
    deadline = time.monotonic() + WAIT_S
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        assert proc is None or proc.poll() is None, f"the process exited before {what}"
        time.sleep(0.05)
