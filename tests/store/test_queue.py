"""The rollout queue: enqueue, dequeue, heartbeat, finish, cancel, workers."""

from __future__ import annotations

import asyncio
import json
import sys
from types import SimpleNamespace

import pytest

from agentbolt.errors import BadInput, Conflict, IllegalTransition, NotFound
from agentbolt.store import Store
from agentbolt.store import queue as store_queue
from agentbolt.types import (
    AttemptFinish,
    AttemptStatus,
    Claim,
    ErrorInfo,
    RolloutConfig,
    RolloutCreate,
    RolloutQuery,
    RolloutStatus,
)

from .factories import claim, enqueue


async def test_enqueue_returns_queuing_rollouts_with_generated_ids(store: Store) -> None:
    created = await store.enqueue(
        [
            RolloutCreate(input={"q": "2+2"}, mode="val", group_id="g1", metadata={"k": [1, 2]}),
            RolloutCreate(input="plain text", rollout_id="my-id.1"),
        ]
    )
    assert created[0].rollout_id.startswith("ro-") and len(created[0].rollout_id) == 19
    assert created[1].rollout_id == "my-id.1"
    stored = await store.get_rollout(created[0].rollout_id)
    assert stored.status is RolloutStatus.QUEUING
    assert stored.input == {"q": "2+2"}
    assert (stored.mode, stored.group_id, stored.metadata) == ("val", "g1", {"k": [1, 2]})
    assert stored.num_attempts == 0 and stored.attempts == []
    assert (await store.get_rollout("my-id.1")).input == "plain text"


async def test_enqueue_rejects_a_taken_rollout_id_and_stores_none_of_the_batch(store: Store) -> None:
    await store.enqueue([RolloutCreate(input=1, rollout_id="taken")])
    with pytest.raises(Conflict, match="taken"):
        await store.enqueue([RolloutCreate(input=2, rollout_id="fresh"), RolloutCreate(input=3, rollout_id="taken")])
    with pytest.raises(Conflict, match="twice"):
        await store.enqueue([RolloutCreate(input=2, rollout_id="twice"), RolloutCreate(input=3, rollout_id="twice")])
    with pytest.raises(NotFound):
        await store.get_rollout("fresh")


async def test_dequeue_hands_out_rollouts_in_fifo_order(store: Store) -> None:
    first = await enqueue(store, 3)
    second = await enqueue(store, 2)
    order = [(await store.dequeue("w")) for _ in range(5)]
    assert [c.rollout.rollout_id for c in order if c] == [r.rollout_id for r in first + second]
    assert await store.dequeue("w") is None


async def test_dequeue_creates_a_running_attempt_owned_by_the_worker(store: Store) -> None:
    [rollout] = await enqueue(store, 1, config={"timeout_s": 30})
    got = await store.dequeue("worker-a")
    assert got is not None
    assert got.rollout.rollout_id == rollout.rollout_id
    assert got.rollout.status is RolloutStatus.RUNNING and got.rollout.num_attempts == 1
    assert got.rollout.config.timeout_s == 30
    attempt = got.attempt
    assert attempt.attempt_id.startswith("at-") and attempt.number == 1
    assert attempt.status is AttemptStatus.RUNNING and attempt.worker_id == "worker-a"
    assert attempt.started_at == attempt.last_heartbeat_at
    assert await store.get_attempt(rollout.rollout_id, attempt.attempt_id) == attempt
    [worker] = await store.list_workers()
    assert worker.worker_id == "worker-a" and worker.current_attempt_id == attempt.attempt_id


async def test_dequeue_filters_by_mode(store: Store) -> None:
    [train] = await enqueue(store, 1, mode="train")
    [val] = await enqueue(store, 1, mode="val")
    got = await store.dequeue("w", modes=["val", "test"])
    assert got is not None and got.rollout.rollout_id == val.rollout_id
    assert await store.dequeue("w", modes=["val"]) is None
    got = await store.dequeue("w", modes=["train"])
    assert got is not None and got.rollout.rollout_id == train.rollout_id


@pytest.mark.parametrize("stores", [1, 3], ids=["one-store", "three-stores"])
async def test_dequeue_is_exclusive_under_concurrency(store: Store, store_url: str, stores: int) -> None:
    # Separate Store objects have separate engines and connection pools, like server processes.
    others = [Store(store_url) for _ in range(stores - 1)]
    for other in others:
        await other.open()
    pool = [store, *others]
    created = await enqueue(store, 200)

    async def dequeuer(i: int) -> list[Claim]:
        mine: list[Claim] = []
        while (got := await pool[i % len(pool)].dequeue(f"w{i}")) is not None:
            mine.append(got)
            await asyncio.sleep(0)  # let the other dequeuers in between
        return mine

    try:
        results = await asyncio.gather(*(dequeuer(i) for i in range(20)))
    finally:
        for other in others:
            await other.close()
    claims = [c for mine in results for c in mine]
    claimed_ids = [c.rollout.rollout_id for c in claims]
    assert sorted(claimed_ids) == sorted(r.rollout_id for r in created)  # each exactly once
    assert all(c.attempt.number == 1 for c in claims)
    page = await store.query_rollouts(RolloutQuery(limit=1000, with_attempts=True))
    assert page.total == 200
    assert all(r.status is RolloutStatus.RUNNING and len(r.attempts or []) == 1 for r in page.items)


async def test_heartbeat_updates_the_attempt_and_the_worker(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    got = await claim(store, "w1")
    later = got.attempt.last_heartbeat_at + 5.0
    monkeypatch.setattr(store_queue, "time", SimpleNamespace(time=lambda: later))  # the store's clock moved on
    beat = await store.heartbeat(got.rollout.rollout_id, got.attempt.attempt_id, "w1")
    assert beat.last_heartbeat_at > got.attempt.last_heartbeat_at
    assert beat.last_heartbeat_at == later
    assert beat.status is AttemptStatus.RUNNING
    [worker] = await store.list_workers()
    assert worker.last_seen_at == beat.last_heartbeat_at
    beat_again = await store.heartbeat(got.rollout.rollout_id, got.attempt.attempt_id)  # worker id optional
    assert beat_again.last_heartbeat_at >= beat.last_heartbeat_at


async def test_heartbeat_names_what_is_unknown(store: Store) -> None:
    got = await claim(store)
    other = await claim(store)
    rid, aid = got.rollout.rollout_id, got.attempt.attempt_id
    with pytest.raises(NotFound, match="rollout nope does not exist"):
        await store.heartbeat("nope", aid)
    with pytest.raises(NotFound, match="attempt at-missing"):
        await store.heartbeat(rid, "at-missing")
    with pytest.raises(NotFound, match=f"belongs to rollout {rid}"):
        await store.heartbeat(other.rollout.rollout_id, aid)


async def test_heartbeat_from_another_worker_is_a_conflict(store: Store) -> None:
    got = await claim(store, "w1")
    with pytest.raises(Conflict, match="belongs to worker w1, not w2"):
        await store.heartbeat(got.rollout.rollout_id, got.attempt.attempt_id, "w2")


async def test_finish_success_sets_reward_and_finishes_the_rollout(store: Store) -> None:
    got = await claim(store, "w1")
    rollout = await store.finish_attempt(
        got.rollout.rollout_id, got.attempt.attempt_id, AttemptFinish(status="succeeded", reward=0.75)
    )
    assert rollout.status is RolloutStatus.SUCCEEDED and rollout.reward == 0.75
    assert rollout.finished_at is not None
    attempt = await store.get_attempt(rollout.rollout_id, got.attempt.attempt_id)
    assert attempt.status is AttemptStatus.SUCCEEDED and attempt.ended_at is not None
    [worker] = await store.list_workers()
    assert worker.current_attempt_id is None and worker.attempts_done == 1


async def test_finish_failure_records_the_error_and_fails_the_rollout(store: Store) -> None:
    got = await claim(store)  # default retry_on does not include "failed"
    error = ErrorInfo(type="ValueError", message="bad tool call", traceback="Traceback ...")
    rollout = await store.finish_attempt(
        got.rollout.rollout_id, got.attempt.attempt_id, AttemptFinish(status="failed", error=error)
    )
    assert rollout.status is RolloutStatus.FAILED and rollout.reward is None
    [attempt] = (await store.get_rollout(rollout.rollout_id)).attempts or []
    assert attempt.status is AttemptStatus.FAILED and attempt.error == error


async def test_failed_attempt_is_retried_in_its_original_queue_position(store: Store) -> None:
    config = RolloutConfig(max_attempts=2, retry_on=["failed"])
    [retried] = await store.enqueue([RolloutCreate(input=0, config=config)])
    first = await store.dequeue("w")
    assert first is not None
    [newer] = await enqueue(store, 1)
    rollout = await store.finish_attempt(retried.rollout_id, first.attempt.attempt_id, AttemptFinish(status="failed"))
    assert rollout.status is RolloutStatus.QUEUING and rollout.finished_at is None
    second = await store.dequeue("w")
    assert second is not None and second.rollout.rollout_id == retried.rollout_id  # before the newer one
    assert second.attempt.number == 2 and second.rollout.num_attempts == 2
    rollout = await store.finish_attempt(retried.rollout_id, second.attempt.attempt_id, AttemptFinish(status="failed"))
    assert rollout.status is RolloutStatus.FAILED  # max_attempts reached
    third = await store.dequeue("w")
    assert third is not None and third.rollout.rollout_id == newer.rollout_id
    assert [a.number for a in (await store.get_rollout(retried.rollout_id)).attempts or []] == [1, 2]


async def test_finishing_twice_is_an_illegal_transition(store: Store) -> None:
    got = await claim(store)
    ids = got.rollout.rollout_id, got.attempt.attempt_id
    await store.finish_attempt(*ids, AttemptFinish(status="succeeded"))
    with pytest.raises(IllegalTransition, match=f"attempt {ids[1]} is already succeeded"):
        await store.finish_attempt(*ids, AttemptFinish(status="failed"))
    assert (await store.get_rollout(ids[0])).status is RolloutStatus.SUCCEEDED


async def test_heartbeat_after_finish_is_an_illegal_transition(store: Store) -> None:
    got = await claim(store)
    ids = got.rollout.rollout_id, got.attempt.attempt_id
    await store.finish_attempt(*ids, AttemptFinish(status="failed"))
    with pytest.raises(IllegalTransition, match="already failed"):
        await store.heartbeat(*ids)


async def test_finish_of_a_cancelled_attempt_is_an_illegal_transition(store: Store) -> None:
    got = await claim(store, "w1")
    ids = got.rollout.rollout_id, got.attempt.attempt_id
    cancelled = await store.cancel(ids[0])
    assert cancelled.status is RolloutStatus.CANCELLED and cancelled.finished_at is not None
    assert (await store.get_attempt(*ids)).status is AttemptStatus.CANCELLED
    with pytest.raises(IllegalTransition, match="already cancelled"):
        await store.finish_attempt(*ids, AttemptFinish(status="succeeded", reward=1.0))
    assert (await store.get_rollout(ids[0])).reward is None
    [worker] = await store.list_workers()
    assert worker.current_attempt_id is None and worker.attempts_done == 0


async def test_cancel_of_a_queuing_rollout_takes_it_off_the_queue(store: Store) -> None:
    [rollout] = await enqueue(store, 1)
    assert (await store.cancel(rollout.rollout_id)).status is RolloutStatus.CANCELLED
    assert await store.dequeue("w") is None
    with pytest.raises(IllegalTransition, match="is cancelled"):
        await store.cancel(rollout.rollout_id)
    with pytest.raises(NotFound, match="rollout nope"):
        await store.cancel("nope")


async def test_finish_names_what_is_unknown(store: Store) -> None:
    got = await claim(store)
    with pytest.raises(NotFound, match="rollout nope does not exist"):
        await store.finish_attempt("nope", got.attempt.attempt_id, AttemptFinish(status="succeeded"))
    with pytest.raises(NotFound, match="attempt at-nope"):
        await store.finish_attempt(got.rollout.rollout_id, "at-nope", AttemptFinish(status="succeeded"))


async def test_dequeue_rejects_an_empty_worker_id(store: Store) -> None:
    with pytest.raises(BadInput, match="worker_id"):
        await store.dequeue("")


_DEQUEUE_ALL = """
import asyncio, json, sys
from agentbolt.store import Store
from agentbolt.store import queue as store_queue

async def main(url: str, worker: str) -> None:
    store = Store(url)
    await store.open()
    print("ready", flush=True)
    sys.stdin.readline()  # start together with the other dequeuers
    claimed = []
    while (got := await store.dequeue(worker)) is not None:
        claimed.append(got.rollout.rollout_id)
    await store.close()
    print(json.dumps(claimed), flush=True)

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


async def test_dequeue_is_exclusive_across_processes(store: Store, store_url: str) -> None:
    created = await enqueue(store, 150)
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _DEQUEUE_ALL,
            store_url,
            f"proc-{i}",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        for i in range(2)
    ]
    for proc in procs:
        assert proc.stdout is not None and proc.stdin is not None
        assert await proc.stdout.readline() == b"ready\n"
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        await proc.stdin.drain()
    mine: list[str] = []
    while (got := await store.dequeue("local")) is not None:
        mine.append(got.rollout.rollout_id)
        await asyncio.sleep(0.001)  # leave the other processes a chance at the lock
    outputs = [await p.communicate() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    theirs = [rid for out, _ in outputs for rid in json.loads(out)]
    assert theirs, "the other processes claimed nothing; the test did not exercise concurrency"
    assert sorted(mine + theirs) == sorted(r.rollout_id for r in created)


async def test_a_number_the_store_cannot_hold_is_bad_input_not_a_driver_error(store: Store) -> None:
    # The types refuse it at the boundary; a value that skipped validation still gets a 400, not a 500.
    unchecked = RolloutCreate.model_construct(
        input=1, mode="train", group_id=None, model_version=2**64, config=RolloutConfig(), metadata={}, rollout_id=None
    )
    with pytest.raises(BadInput):
        await store.enqueue([unchecked])
    assert (await store.query_rollouts(RolloutQuery())).total == 0
    page = await store.query_rollouts(RolloutQuery(offset=2**63 - 1))  # the largest offset the store takes
    assert page.items == []
