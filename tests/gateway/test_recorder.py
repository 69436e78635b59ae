"""The batching span recorder (gateway/recorder.py): group commit, refusals, flushing one attempt."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path
from typing import Any

from agentbolt.gateway.recorder import SpanRecorder
from agentbolt.store import Store
from agentbolt.types import RolloutCreate, SpanIn


def _span(rollout_id: str | None, attempt_id: str | None) -> SpanIn:
    return SpanIn(
        rollout_id=rollout_id,
        attempt_id=attempt_id,
        trace_id=secrets.token_hex(16),
        span_id=secrets.token_hex(8),
        name="chat policy",
        start_time_ns=1,
        end_time_ns=2,
    )


async def test_recorder_writes_many_calls_in_few_transactions_and_flush_waits_for_them(tmp_path: Path) -> None:
    store = Store(f"sqlite+aiosqlite:///{tmp_path / 'r.db'}")
    await store.open()
    transactions = 0
    add_spans = store.add_spans

    async def counting(spans: list[SpanIn]) -> Any:
        nonlocal transactions
        transactions += 1
        return await add_spans(spans)

    store.add_spans = counting  # type: ignore[method-assign]
    recorder = SpanRecorder(store, interval_s=0.05)
    recorder.start()
    for _ in range(50):
        recorder.add(None, [_span(None, None), _span(None, None)])
    assert recorder.pending == 50
    await recorder.flush()
    assert recorder.pending == 0 and recorder.recorded == 100
    assert transactions <= 2
    assert (await store.query_spans(None)).total == 100
    await recorder.aclose()
    await store.close()


async def test_recorder_drops_only_the_call_the_store_refuses(tmp_path: Path) -> None:
    store = Store(f"sqlite+aiosqlite:///{tmp_path / 'r.db'}")
    await store.open()
    [rollout] = await store.enqueue([RolloutCreate(input=1)])
    recorder = SpanRecorder(store, interval_s=0.01)
    recorder.start()
    recorder.add(None, [_span(rollout.rollout_id, None)])
    recorder.add("gone", [_span("no-such-rollout", None), _span("no-such-rollout", None)])
    recorder.add(None, [_span(None, None)])
    await recorder.flush()
    assert (recorder.recorded, recorder.dropped) == (2, 2)
    assert (await store.query_spans(rollout.rollout_id)).total == 1
    await recorder.aclose()
    await store.close()


async def test_recorder_flush_of_one_attempt_returns_at_once_when_it_has_nothing_pending(tmp_path: Path) -> None:
    store = Store(f"sqlite+aiosqlite:///{tmp_path / 'r.db'}")
    await store.open()
    writing, release = asyncio.Event(), asyncio.Event()
    add_spans = store.add_spans

    async def held(spans: list[SpanIn]) -> Any:  # the store write waits until the test releases it
        writing.set()
        await release.wait()
        return await add_spans(spans)

    store.add_spans = held  # type: ignore[method-assign]
    recorder = SpanRecorder(store, interval_s=5.0)  # a long window: only a flush writes early
    recorder.start()
    recorder.add(None, [_span(None, None)])
    flush_all = asyncio.create_task(recorder.flush())
    await writing.wait()  # another call's write is in progress, held in the store
    flush_other = asyncio.create_task(recorder.flush("other-attempt"))
    await asyncio.sleep(0)  # one turn of the event loop: all a flush with nothing to wait for needs
    assert flush_other.done() and not flush_all.done()
    assert recorder.pending == 1
    release.set()
    await flush_all
    assert recorder.recorded == 1
    await recorder.aclose()
    await store.close()
