"""Small builders for store tests."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

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


async def execute_raw(url: str, statement: sa.Executable) -> sa.Result[Any]:
    """Run one statement on a store's database outside any Store (to inspect or damage it), committed.

    Rows come back buffered, readable after the connection is gone. SQLite goes through the stdlib
    driver, as the store does (agentbolt does not depend on aiosqlite).
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":

        def run() -> sa.Result[Any]:
            engine = sa.create_engine(parsed.set(drivername="sqlite+pysqlite"))
            try:
                with engine.begin() as conn:
                    result = conn.execute(statement)
                    return result.freeze()() if result.returns_rows else result
            finally:
                engine.dispose()

        return await asyncio.to_thread(run)
    engine = create_async_engine(parsed)
    try:
        async with engine.begin() as conn:
            result = await conn.execute(statement)
            return result.freeze()() if result.returns_rows else result
    finally:
        await engine.dispose()
