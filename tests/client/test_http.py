"""``ServerClient``'s retry policy and keep-alive (unit tests: a mock transport stands in for the server)."""

from __future__ import annotations

import asyncio

import httpx
import pytest
import uvicorn

from agentbolt.client.http import KEEPALIVE_EXPIRY_S, RetryPolicy, ServerClient
from agentbolt.errors import ServerUnreachable
from agentbolt.types import Attempt, AttemptFinish

ATTEMPT = Attempt(attempt_id="at-1", rollout_id="ro-1", number=1, started_at=0.0, last_heartbeat_at=0.0)
FAST = RetryPolicy(tries=4, first_delay_s=0.001, max_delay_s=0.002)
ROLLOUT = {"rollout_id": "ro-1", "input": 1, "mode": "train", "config": {}, "status": "succeeded", "created_at": 0.0}


def test_idle_connections_expire_before_uvicorn_closes_them() -> None:
    assert KEEPALIVE_EXPIRY_S < uvicorn.Config(app="agentbolt.server:create_app").timeout_keep_alive


def test_retry_delays_double_and_stay_bounded() -> None:
    policy = RetryPolicy(tries=10, first_delay_s=0.2, max_delay_s=5.0)
    delays = [policy.delay_s(retry) for retry in range(policy.tries)]
    assert 0.15 <= delays[0] <= 0.25
    assert all(d <= 5.0 * 1.25 for d in delays)


def _failing_then(answer: httpx.Response, failures: int) -> tuple[httpx.MockTransport, list[str]]:
    calls: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        if len(calls) <= failures:
            raise httpx.ReadError("connection dropped", request=request)
        return answer

    return httpx.MockTransport(handle), calls


def test_finish_is_retried_after_a_transport_error() -> None:
    transport, calls = _failing_then(httpx.Response(200, json=ROLLOUT), failures=2)

    async def scenario() -> None:
        async with ServerClient("http://server", retry=FAST, transport=transport) as client:
            rollout = await client.finish(ATTEMPT, AttemptFinish(status="succeeded"))
            assert rollout.rollout_id == "ro-1"
            assert client.retries == 2

    asyncio.run(scenario())
    assert len(calls) == 3


def test_retries_are_bounded_and_dequeue_is_never_resent() -> None:
    transport, calls = _failing_then(httpx.Response(204), failures=100)

    async def scenario() -> None:
        async with ServerClient("http://server", retry=FAST, transport=transport) as client:
            with pytest.raises(ServerUnreachable):
                await client.heartbeat(ATTEMPT)
            assert len(calls) == FAST.tries
            with pytest.raises(ServerUnreachable):
                await client.dequeue("w")  # not idempotent: a lost answer may hide a claim
            assert len(calls) == FAST.tries + 1

    asyncio.run(scenario())
