"""Which rollout attempt a gateway call belongs to, and whether that attempt may still call.

A call is attributed by its path (``/rollouts/{rollout_id}/attempts/{attempt_id}/v1/...``) or by the
headers ``X-Agentbolt-Rollout-Id`` and ``X-Agentbolt-Attempt-Id`` (both or neither); a W3C
``traceparent`` header makes its spans children of the caller's span; ``X-Agentbolt-Agent`` names
the agent that made the call.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass

from starlette.datastructures import Headers

from agentbolt.gateway.errors import GatewayError
from agentbolt.store import Store

_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
ROLLOUT_HEADER = "x-agentbolt-rollout-id"
ATTEMPT_HEADER = "x-agentbolt-attempt-id"
AGENT_HEADER = "x-agentbolt-agent"


@dataclass(frozen=True)
class CallContext:
    """Who made a call: its attempt (or None), trace position and agent name."""

    rollout_id: str | None
    attempt_id: str | None
    trace_id: str
    parent_id: str | None
    agent_name: str | None
    received_ns: int


def call_context(path_rollout: str | None, path_attempt: str | None, headers: Headers) -> CallContext:
    """The context of a call from its path parameters and headers.

    Raises:
        GatewayError: only one of the two attribution headers, or headers that contradict the path.
    """
    received = time.time_ns()
    h_rollout, h_attempt = headers.get(ROLLOUT_HEADER), headers.get(ATTEMPT_HEADER)
    if (h_rollout is None) != (h_attempt is None):
        raise GatewayError(
            f"give both {ROLLOUT_HEADER} and {ATTEMPT_HEADER}, or neither (the attempt is what a call belongs to)",
            param=ATTEMPT_HEADER if h_attempt is None else ROLLOUT_HEADER,
        )
    rollout, attempt = path_rollout, path_attempt
    if h_rollout is not None:
        if rollout is not None and (h_rollout, h_attempt) != (rollout, attempt):
            raise GatewayError(
                f"the path names attempt {attempt} of rollout {rollout} but the headers name attempt "
                f"{h_attempt} of rollout {h_rollout}; drop one of them",
                param=ROLLOUT_HEADER,
            )
        rollout, attempt = h_rollout, h_attempt
    trace_id, parent_id = os.urandom(16).hex(), None
    parsed = _parse_traceparent(headers.get("traceparent"))
    if parsed is not None:
        trace_id, parent_id = parsed
    return CallContext(rollout, attempt, trace_id, parent_id, headers.get(AGENT_HEADER) or None, received)


def _parse_traceparent(value: str | None) -> tuple[str, str] | None:
    """(trace id, parent span id) of a valid W3C traceparent; an invalid one is ignored, as the spec asks."""
    if not value:
        return None
    match = _TRACEPARENT.match(value.strip().lower())
    if match is None or match.group(1) == "ff":
        return None
    trace_id, span_id = match.group(2), match.group(3)
    if trace_id == "0" * 32 or span_id == "0" * 16:
        return None
    return trace_id, span_id


class AttemptGate:
    """Lets calls of running attempts through; 404 for unknown ones, 409 for finished ones.

    A running attempt is looked up in the store at most once per ``ttl_s`` (calls are frequent,
    attempts long); a finished one is remembered for good (finished is final). The finish route of
    this process tells the gate at once; an attempt ended by another server process or the watchdog
    is noticed within ``ttl_s``.
    """

    def __init__(self, store: Store, ttl_s: float = 1.0, max_entries: int = 100_000) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._seen: dict[str, tuple[str, bool, float]] = {}  # attempt -> (rollout, finished, checked at)

    async def check(self, rollout_id: str, attempt_id: str) -> None:
        """Raise unless ``attempt_id`` is a running attempt of ``rollout_id``.

        Raises:
            NotFound: no such rollout, or no such attempt of it.
            GatewayError: 409, the attempt has finished.
        """
        now = time.monotonic()
        seen = self._seen.get(attempt_id)
        if seen is not None and seen[0] == rollout_id and (seen[1] or now - seen[2] < self.ttl_s):
            finished = seen[1]
        else:
            attempt = await self.store.get_attempt(rollout_id, attempt_id)
            finished = attempt.status.finished
            if len(self._seen) >= self.max_entries:
                self._seen.clear()
            self._seen[attempt_id] = (rollout_id, finished, now)
        if finished:
            raise GatewayError(
                f"attempt {attempt_id} of rollout {rollout_id} has finished; its LLM calls are closed. "
                "A retried rollout gets a new attempt and a new base URL.",
                status=409,
                code="attempt_finished",
            )

    def finished(self, rollout_id: str, attempt_id: str) -> None:
        """Record that ``attempt_id`` finished (called by this process's finish route)."""
        self._seen[attempt_id] = (rollout_id, True, time.monotonic())
