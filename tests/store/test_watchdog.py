"""The watchdog step: attempts past their timeout or heartbeat timeout are ended and retried or failed."""

from __future__ import annotations

import asyncio

import pytest

from agentbolt.errors import IllegalTransition
from agentbolt.store import Store
from agentbolt.types import AttemptFinish, AttemptStatus, RolloutQuery, RolloutStatus

from .factories import claim, enqueue, span


async def test_timed_out_attempt_is_requeued_then_the_rollout_fails_after_max_attempts(store: Store) -> None:
    [rollout] = await enqueue(store, 1, config={"timeout_s": 10, "heartbeat_timeout_s": None, "max_attempts": 2})
    first = await store.dequeue("w1")
    assert first is not None
    assert await store.expire_attempts(now=first.attempt.started_at + 5) == []

    [ended] = await store.expire_attempts(now=first.attempt.started_at + 11)
    assert ended.attempt_id == first.attempt.attempt_id
    assert ended.status is AttemptStatus.TIMEOUT and ended.ended_at == first.attempt.started_at + 11
    assert (await store.get_rollout(rollout.rollout_id)).status is RolloutStatus.QUEUING
    [worker] = await store.list_workers()
    assert worker.current_attempt_id is None

    second = await store.dequeue("w2")
    assert second is not None and second.attempt.number == 2
    [ended] = await store.expire_attempts(now=second.attempt.started_at + 11)
    assert ended.attempt_id == second.attempt.attempt_id
    final = await store.get_rollout(rollout.rollout_id)
    assert final.status is RolloutStatus.FAILED and final.finished_at is not None
    assert [a.status for a in final.attempts or []] == [AttemptStatus.TIMEOUT, AttemptStatus.TIMEOUT]
    assert await store.dequeue("w3") is None


async def test_silent_attempt_becomes_unresponsive_and_is_requeued_per_retry_on(store: Store) -> None:
    [retried] = await enqueue(store, 1, config={"heartbeat_timeout_s": 5, "max_attempts": 3})
    [not_retried] = await enqueue(
        store, 1, config={"heartbeat_timeout_s": 5, "max_attempts": 3, "retry_on": ["timeout"]}
    )
    a = await store.dequeue("w1")
    b = await store.dequeue("w2")
    assert a is not None and b is not None
    now = max(a.attempt.started_at, b.attempt.started_at) + 6
    ended = await store.expire_attempts(now=now)
    assert {e.attempt_id for e in ended} == {a.attempt.attempt_id, b.attempt.attempt_id}
    assert all(e.status is AttemptStatus.UNRESPONSIVE for e in ended)
    assert (await store.get_rollout(retried.rollout_id)).status is RolloutStatus.QUEUING
    assert (await store.get_rollout(not_retried.rollout_id)).status is RolloutStatus.FAILED


async def test_heartbeats_keep_an_attempt_alive(store: Store) -> None:
    got = await claim(store, config={"heartbeat_timeout_s": 0.05})
    rid, aid = got.rollout.rollout_id, got.attempt.attempt_id
    await asyncio.sleep(0.1)  # longer than the heartbeat timeout since the start
    beat = await store.heartbeat(rid, aid)
    assert await store.expire_attempts(now=beat.last_heartbeat_at + 0.04) == []
    [ended] = await store.expire_attempts(now=beat.last_heartbeat_at + 0.06)
    assert ended.attempt_id == aid and ended.status is AttemptStatus.UNRESPONSIVE


async def test_timeout_wins_over_unresponsive_when_both_apply(store: Store) -> None:
    got = await claim(store, config={"timeout_s": 5, "heartbeat_timeout_s": 5})
    [ended] = await store.expire_attempts(now=got.attempt.started_at + 100)
    assert ended.status is AttemptStatus.TIMEOUT


async def test_finish_after_the_watchdog_timed_out_the_attempt_is_illegal(store: Store) -> None:
    got = await claim(store, config={"timeout_s": 1})
    ids = got.rollout.rollout_id, got.attempt.attempt_id
    await store.expire_attempts(now=got.attempt.started_at + 2)
    with pytest.raises(IllegalTransition, match="already timeout"):
        await store.finish_attempt(*ids, AttemptFinish(status="succeeded", reward=1.0))
    with pytest.raises(IllegalTransition, match="already timeout"):
        await store.heartbeat(*ids)
    rollout = await store.get_rollout(ids[0])
    assert rollout.status is RolloutStatus.FAILED and rollout.reward is None


async def test_spans_are_kept_after_the_attempt_timed_out(store: Store) -> None:
    got = await claim(store, config={"timeout_s": 1})
    rid, aid = got.rollout.rollout_id, got.attempt.attempt_id
    await store.add_spans([span(rid, aid, start=1), span(rid, aid, start=2)])
    await store.expire_attempts(now=got.attempt.started_at + 2)
    late = await store.add_spans([span(rid, aid, start=3)])  # the killed worker's exporter flushes late
    assert late.inserted == 1
    page = await store.query_spans(rid, aid)
    assert [s.sequence_id for s in page.items] == [0, 1, 2]


async def test_each_expired_attempt_is_ended_once_by_concurrent_watchdogs(store: Store, store_url: str) -> None:
    created = await enqueue(store, 30, config={"timeout_s": 1})
    claims = [await store.dequeue(f"w{i}") for i in range(30)]
    assert all(claims)
    # Separate stores act like the watchdogs of separate server processes.
    others = [Store(store_url) for _ in range(2)]
    for other in others:
        await other.open()
    try:
        now = max(c.attempt.started_at for c in claims if c) + 5
        sweeps = await asyncio.gather(*(s.expire_attempts(now=now) for s in [store, *others] for _ in range(2)))
    finally:
        for other in others:
            await other.close()
    ended = [a.attempt_id for sweep in sweeps for a in sweep]
    assert sorted(ended) == sorted(c.attempt.attempt_id for c in claims if c)
    page = await store.query_rollouts(RolloutQuery(rollout_ids=[r.rollout_id for r in created], limit=100))
    assert [r.status for r in page.items] == [RolloutStatus.FAILED] * 30  # max_attempts=1
