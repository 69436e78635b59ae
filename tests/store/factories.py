"""Small builders for store tests."""

from __future__ import annotations

import secrets
from typing import Any

from agentbolt.store import Store
from agentbolt.types import Claim, Rollout, RolloutConfig, RolloutCreate, SpanIn


def span(
    rollout_id: str | None = None,
    attempt_id: str | None = None,
    *,
    start: int = 1_000,
    name: str = "step",
    trace_id: str | None = None,
    span_id: str | None = None,
    **fields: Any,
) -> SpanIn:
    """A span with fresh random ids unless given."""
    return SpanIn(
        rollout_id=rollout_id,
        attempt_id=attempt_id,
        trace_id=trace_id or secrets.token_hex(16),
        span_id=span_id or secrets.token_hex(8),
        name=name,
        start_time_ns=start,
        end_time_ns=start + 10,
        **fields,
    )


async def enqueue(store: Store, n: int = 1, **fields: Any) -> list[Rollout]:
    """Enqueue ``n`` rollouts with inputs 0..n-1."""
    if "config" in fields and isinstance(fields["config"], dict):
        fields["config"] = RolloutConfig(**fields["config"])
    return await store.enqueue([RolloutCreate(input={"i": i}, **fields) for i in range(n)])


async def claim(store: Store, worker_id: str = "w1", **fields: Any) -> Claim:
    """Enqueue one rollout and dequeue it (on a queue with nothing else queuing)."""
    await enqueue(store, 1, **fields)
    got = await store.dequeue(worker_id)
    assert got is not None
    return got
