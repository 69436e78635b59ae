"""Batched queue calls (a worker's runners at once) and the SQLite group commit: each item as if alone."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from agentbolt.errors import BadInput, Conflict, IllegalTransition, NotFound
from agentbolt.store import Store
from agentbolt.types import AttemptFinish, AttemptStatus, Rollout, RolloutConfig, RolloutCreate, RolloutStatus
from agentbolt.types.queue import AttemptFinishItem, AttemptHeartbeat, AttemptRelease

from .factories import claim, enqueue


def _finish(rollout_id: str, attempt_id: str, status: str = "succeeded", **fields: object) -> AttemptFinishItem:
    return AttemptFinishItem(rollout_id=rollout_id, attempt_id=attempt_id, status=status, **fields)  # type: ignore[arg-type]


async def test_dequeue_many_gives_the_oldest_rollouts_one_per_worker_in_order(store: Store) -> None:
    queued = await enqueue(store, 3)
    claims = await store.dequeue_many(["w-0", "w-1", "w-2", "w-3", "w-4"])
    assert [c.rollout.rollout_id for c in claims] == [r.rollout_id for r in queued]  # fewer than asked: all 3
    assert [c.attempt.worker_id for c in claims] == ["w-0", "w-1", "w-2"]
    assert all(c.rollout.status is RolloutStatus.RUNNING and c.attempt.number == 1 for c in claims)
    assert len({c.attempt.attempt_id for c in claims}) == 3
    workers = {w.worker_id: w for w in await store.list_workers()}
    assert {w: workers[w].current_attempt_id for w in ("w-0", "w-1", "w-2")} == {
        c.attempt.worker_id: c.attempt.attempt_id for c in claims
    }
    assert await store.dequeue_many(["w-5", "w-6"]) == []


async def test_dequeue_many_refuses_empty_or_repeated_worker_ids(store: Store) -> None:
    await enqueue(store, 2)
    with pytest.raises(BadInput, match="more than once"):
        await store.dequeue_many(["w", "w"])
    with pytest.raises(BadInput, match="worker_id"):
        await store.dequeue_many(["w", ""])
    assert len(await store.dequeue_many(["a", "b"])) == 2  # the refused calls claimed nothing


async def test_concurrent_dequeue_many_never_hands_a_rollout_out_twice(store: Store) -> None:
    await enqueue(store, 40)
    batches = await asyncio.gather(*(store.dequeue_many([f"w{b}-{i}" for i in range(7)]) for b in range(8)))
    ids = [c.rollout.rollout_id for batch in batches for c in batch]
    assert len(ids) == 40 and len(set(ids)) == 40


async def test_finish_attempts_answers_each_finish_as_alone_and_refused_ones_change_nothing(store: Store) -> None:
    retried = RolloutConfig(max_attempts=2, retry_on=["failed"])
    ok, requeued, done = (
        (await claim(store, "w1")),
        (await claim(store, "w2", config=retried)),
        await claim(store, "w3"),
    )
    await store.finish_attempt(done.rollout.rollout_id, done.attempt.attempt_id, AttemptFinish(status="failed"))
    outcomes = await store.finish_attempts(
        [
            _finish(ok.rollout.rollout_id, ok.attempt.attempt_id, reward=0.25),
            _finish(requeued.rollout.rollout_id, requeued.attempt.attempt_id, "failed"),
            _finish(done.rollout.rollout_id, done.attempt.attempt_id, "succeeded", reward=1.0),  # ended otherwise
            _finish("nope", ok.attempt.attempt_id),
            _finish(ok.rollout.rollout_id, "at-nope"),
            _finish(ok.rollout.rollout_id, ok.attempt.attempt_id, reward=0.25),  # the first one again: a repeat
        ]
    )
    first, second, third, fourth, fifth, sixth = outcomes
    assert isinstance(first, Rollout) and first.status is RolloutStatus.SUCCEEDED and first.reward == 0.25
    assert isinstance(second, Rollout) and second.status is RolloutStatus.QUEUING and second.finished_at is None
    assert isinstance(third, IllegalTransition) and "already failed" in str(third)
    assert isinstance(fourth, NotFound) and "rollout nope does not exist" in str(fourth)
    assert isinstance(fifth, NotFound) and "at-nope" in str(fifth)
    assert isinstance(sixth, Rollout) and sixth.status is RolloutStatus.SUCCEEDED
    stored_done = await store.get_rollout(done.rollout.rollout_id)
    assert (stored_done.status, stored_done.reward) == (
        RolloutStatus.FAILED,
        None,
    )  # the refused finish changed nothing
    assert (await store.get_attempt(ok.rollout.rollout_id, ok.attempt.attempt_id)).status is AttemptStatus.SUCCEEDED
    assert (await store.get_rollout(requeued.rollout.rollout_id)).status is RolloutStatus.QUEUING
    workers = {w.worker_id: w for w in await store.list_workers()}
    assert (workers["w1"].attempts_done, workers["w1"].current_attempt_id) == (1, None)
    assert (workers["w2"].attempts_done, workers["w3"].attempts_done) == (1, 1)
    again = await store.dequeue("w4")  # the requeued rollout runs again
    assert again is not None and again.rollout.rollout_id == requeued.rollout.rollout_id


async def test_heartbeats_answer_each_attempt_as_alone(store: Store) -> None:
    running, other, ended = (await claim(store, "w1")), (await claim(store, "w2")), await claim(store, "w3")
    await store.finish_attempt(ended.rollout.rollout_id, ended.attempt.attempt_id, AttemptFinish(status="succeeded"))
    beats = [
        AttemptHeartbeat(rollout_id=running.rollout.rollout_id, attempt_id=running.attempt.attempt_id, worker_id="w1"),
        AttemptHeartbeat(rollout_id=other.rollout.rollout_id, attempt_id=other.attempt.attempt_id, worker_id="w1"),
        AttemptHeartbeat(rollout_id=ended.rollout.rollout_id, attempt_id=ended.attempt.attempt_id),
        AttemptHeartbeat(rollout_id=other.rollout.rollout_id, attempt_id=running.attempt.attempt_id),
    ]
    beat, wrong_worker, late, mismatched = await store.heartbeats(beats)
    assert not isinstance(beat, Exception) and beat.last_heartbeat_at >= running.attempt.last_heartbeat_at
    assert isinstance(wrong_worker, Conflict) and "belongs to worker w2, not w1" in str(wrong_worker)
    assert isinstance(late, IllegalTransition) and "already succeeded" in str(late)
    assert isinstance(mismatched, NotFound) and f"belongs to rollout {running.rollout.rollout_id}" in str(mismatched)
    stored = await store.get_attempt(other.rollout.rollout_id, other.attempt.attempt_id)
    assert stored.last_heartbeat_at == other.attempt.last_heartbeat_at  # a refused beat changes nothing


async def test_a_write_that_fails_in_a_group_commit_is_rolled_back_alone(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'group.db'}")
    await store.open()
    try:
        [kept, released] = [await claim(store, "w1"), await claim(store, "w2")]
        await store.enqueue([RolloutCreate(input=0, rollout_id="taken")])
        # Asked for in one turn of the event loop, so they share one transaction. The release ends its attempt,
        # then finds the wrong worker and raises: its change must go, the others' must stay.
        results = await asyncio.gather(
            store.finish_attempt(kept.rollout.rollout_id, kept.attempt.attempt_id, AttemptFinish(status="succeeded")),
            store.release_attempt(
                released.rollout.rollout_id, released.attempt.attempt_id, AttemptRelease(worker_id="someone-else")
            ),
            store.enqueue([RolloutCreate(input=1, rollout_id="taken")]),
            store.enqueue([RolloutCreate(input=2, rollout_id="fresh")]),
            return_exceptions=True,
        )
        finished, refused_release, duplicate, fresh = results
        assert isinstance(finished, Rollout) and finished.status is RolloutStatus.SUCCEEDED
        assert isinstance(refused_release, Conflict)
        assert isinstance(duplicate, Conflict)
        assert isinstance(fresh, list) and fresh[0].rollout_id == "fresh"
    finally:
        await store.close()
    # What was answered is durable: a store opened afresh on the file sees it, and nothing of the refused ones.
    reopened = Store(f"sqlite:///{tmp_path / 'group.db'}")
    await reopened.open()
    try:
        assert (await reopened.get_rollout(kept.rollout.rollout_id)).status is RolloutStatus.SUCCEEDED
        attempt = await reopened.get_attempt(released.rollout.rollout_id, released.attempt.attempt_id)
        assert attempt.status is AttemptStatus.RUNNING
        assert (await reopened.get_rollout("fresh")).input == 2
        assert (await reopened.get_rollout("taken")).input == 0
    finally:
        await reopened.close()
