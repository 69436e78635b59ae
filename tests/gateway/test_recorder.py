"""The batching span recorder (gateway/recorder.py): group commit, refusals, flushing one attempt, and
answer durability (a recorded call returns once its spans are stored, and never hangs on a failed write)."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path
from typing import Any

import pytest

from agentbolt.errors import StoreUnavailable
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


# --- answer durability: record() returns once the call's spans are stored ------------------------------


async def _open(tmp_path: Path) -> Store:
    store = Store(f"sqlite:///{tmp_path / 'r.db'}")
    await store.open()
    return store


async def test_record_returns_once_its_spans_are_stored_without_waiting_for_the_interval(tmp_path: Path) -> None:
    store = await _open(tmp_path)
    [rollout] = await store.enqueue([RolloutCreate(input=1)])
    recorder = SpanRecorder(store, interval_s=10.0)  # add() would leave the span unwritten for 10 s
    recorder.start()
    stored = await asyncio.wait_for(recorder.record(None, [_span(rollout.rollout_id, None)]), timeout=5)
    assert stored and recorder.pending == 0
    assert (await store.query_spans(rollout.rollout_id)).total == 1
    await recorder.aclose()
    await store.close()


def _hold_commits(store: Store) -> tuple[asyncio.Event, asyncio.Event, list[int]]:
    """Make each commit of ``store`` wait for the returned ``release`` event; ``writing`` is set once one is
    running, and ``batches`` gets each commit's span count."""
    writing, release = asyncio.Event(), asyncio.Event()
    batches: list[int] = []
    add_spans = store.add_spans

    async def held(spans: list[SpanIn]) -> Any:
        batches.append(len(spans))
        writing.set()
        await release.wait()
        return await add_spans(spans)

    store.add_spans = held  # type: ignore[method-assign]
    return writing, release, batches


async def test_records_that_arrive_during_a_commit_share_the_next_one(tmp_path: Path) -> None:
    store = await _open(tmp_path)
    writing, release, batches = _hold_commits(store)
    recorder = SpanRecorder(store, interval_s=10.0)
    recorder.start()
    first = asyncio.create_task(recorder.record(None, [_span(None, None)]))
    await writing.wait()  # the first call's commit is running
    later = [asyncio.create_task(recorder.record(None, [_span(None, None)])) for _ in range(20)]
    await asyncio.sleep(0.05)
    assert not first.done() and not any(t.done() for t in later)  # nobody is answered before its commit
    release.set()
    assert await first and all(await asyncio.gather(*later))
    assert batches == [1, 20]  # one commit for the first call, one for the twenty that came meanwhile
    assert (await store.query_spans(None)).total == 21
    await recorder.aclose()
    await store.close()


async def test_record_of_spans_the_store_refuses_returns_false_and_counts_the_drop(tmp_path: Path) -> None:
    store = await _open(tmp_path)
    [rollout] = await store.enqueue([RolloutCreate(input=1)])
    recorder = SpanRecorder(store, interval_s=10.0)
    recorder.start()
    good = asyncio.create_task(recorder.record(None, [_span(rollout.rollout_id, None)]))
    bad = asyncio.create_task(recorder.record("gone", [_span("no-such-rollout", None), _span("no-such-rollout", None)]))
    assert await asyncio.wait_for(good, timeout=5) is True
    assert await asyncio.wait_for(bad, timeout=5) is False
    assert (recorder.recorded, recorder.dropped, recorder.pending) == (1, 2, 0)
    assert (await store.query_spans(rollout.rollout_id)).total == 1
    await recorder.aclose()
    await store.close()


async def test_record_returns_when_the_store_stays_unavailable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("agentbolt.gateway.recorder._RETRIES", 2)  # two tries: 50 ms of back-off, not 4 s
    store = await _open(tmp_path)
    tries = 0

    async def unavailable(spans: list[SpanIn]) -> Any:
        nonlocal tries
        tries += 1
        raise StoreUnavailable("the database is down")

    store.add_spans = unavailable  # type: ignore[method-assign]
    recorder = SpanRecorder(store, interval_s=10.0)
    recorder.start()
    assert await asyncio.wait_for(recorder.record(None, [_span(None, None)]), timeout=5) is False
    assert (tries, recorder.dropped, recorder.pending) == (2, 1, 0)
    await recorder.aclose()
    await store.close()


async def test_a_cancelled_record_still_writes_its_spans(tmp_path: Path) -> None:
    store = await _open(tmp_path)
    writing, release, _ = _hold_commits(store)
    recorder = SpanRecorder(store, interval_s=10.0)
    recorder.start()
    waiting = asyncio.create_task(recorder.record("a1", [_span(None, None)]))
    await writing.wait()
    waiting.cancel()  # the client went away before its answer
    with pytest.raises(asyncio.CancelledError):
        await waiting
    release.set()
    await recorder.flush("a1")  # what the attempt's finish awaits
    assert recorder.recorded == 1 and (await store.query_spans(None)).total == 1
    await recorder.aclose()
    await store.close()


async def test_record_without_a_running_writer_writes_the_spans_itself(tmp_path: Path) -> None:
    store = await _open(tmp_path)
    recorder = SpanRecorder(store, interval_s=10.0)  # never started
    assert await asyncio.wait_for(recorder.record(None, [_span(None, None)]), timeout=5) is True
    assert (await store.query_spans(None)).total == 1
    await recorder.aclose()
    await store.close()
