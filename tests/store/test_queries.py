"""Rollout queries, waiting for rollouts, and model versions."""

from __future__ import annotations

import asyncio

import pytest

from agentbolt.errors import Conflict, NotFound
from agentbolt.store import Store
from agentbolt.types import AttemptFinish, ModelVersionCreate, RolloutQuery, RolloutStatus

from .factories import enqueue


async def test_query_rollouts_filters_and_paginates_oldest_first(store: Store) -> None:
    train = await enqueue(store, 5, mode="train", group_id="g1")
    val = await enqueue(store, 3, mode="val", group_id="g2")
    got = await store.dequeue("w", modes=["train"])
    assert got is not None and got.rollout.rollout_id == train[0].rollout_id

    everything = await store.query_rollouts(RolloutQuery())
    assert everything.total == 8
    assert [r.rollout_id for r in everything.items] == [r.rollout_id for r in train + val]
    assert all(r.attempts is None for r in everything.items)

    page = await store.query_rollouts(RolloutQuery(mode="train", limit=2, offset=2))
    assert (page.total, page.limit, page.offset) == (5, 2, 2)
    assert [r.rollout_id for r in page.items] == [r.rollout_id for r in train[2:4]]

    queuing = await store.query_rollouts(RolloutQuery(status=[RolloutStatus.QUEUING], group_id="g1"))
    assert [r.rollout_id for r in queuing.items] == [r.rollout_id for r in train[1:]]
    running = await store.query_rollouts(RolloutQuery(status=[RolloutStatus.RUNNING, RolloutStatus.FAILED]))
    assert [r.rollout_id for r in running.items] == [train[0].rollout_id]

    picked = await store.query_rollouts(RolloutQuery(rollout_ids=[val[2].rollout_id, train[1].rollout_id, "nope"]))
    assert [r.rollout_id for r in picked.items] == [train[1].rollout_id, val[2].rollout_id]
    assert (await store.query_rollouts(RolloutQuery(group_id="none"))).total == 0


async def test_query_rollouts_can_include_attempts(store: Store) -> None:
    [a, b] = await enqueue(store, 2)
    got = await store.dequeue("w")
    assert got is not None
    page = await store.query_rollouts(RolloutQuery(with_attempts=True))
    by_id = {r.rollout_id: r for r in page.items}
    assert by_id[a.rollout_id].attempts == [got.attempt]
    assert by_id[b.rollout_id].attempts == []


async def test_get_rollout_and_attempt_of_unknown_ids_raise_not_found(store: Store) -> None:
    [rollout] = await enqueue(store, 1)
    with pytest.raises(NotFound, match="rollout nope does not exist"):
        await store.get_rollout("nope")
    with pytest.raises(NotFound, match="attempt at-nope"):
        await store.get_attempt(rollout.rollout_id, "at-nope")
    assert (await store.get_rollout(rollout.rollout_id, with_attempts=False)).attempts is None


async def test_get_rollouts_returns_each_in_the_order_given(store: Store) -> None:
    [a, b, c] = await enqueue(store, 3)
    got = await store.dequeue("w")
    assert got is not None and got.rollout.rollout_id == a.rollout_id
    await store.finish_attempt(a.rollout_id, got.attempt.attempt_id, AttemptFinish(status="succeeded", reward=1.0))
    order = [c.rollout_id, a.rollout_id, b.rollout_id, c.rollout_id]

    many = await store.get_rollouts(order)
    assert many == [await store.get_rollout(i) for i in order]
    assert [len(r.attempts or []) for r in many] == [0, 1, 0, 0]
    assert (many[1].status, many[1].reward) == (RolloutStatus.SUCCEEDED, 1.0)
    bare = await store.get_rollouts(order, with_attempts=False)
    assert bare == [await store.get_rollout(i, with_attempts=False) for i in order]
    assert all(r.attempts is None for r in bare)
    assert await store.get_rollouts([]) == []


async def test_get_rollouts_names_every_unknown_id(store: Store) -> None:
    [a] = await enqueue(store, 1)
    with pytest.raises(NotFound, match="rollout nope, gone does not exist"):
        await store.get_rollouts(["nope", a.rollout_id, "gone", "nope"])


async def test_wait_for_rollouts_returns_once_all_are_finished(store: Store) -> None:
    [a, b] = await enqueue(store, 2)

    async def work() -> None:
        for _ in range(2):
            await asyncio.sleep(0.1)
            got = await store.dequeue("w")
            assert got is not None
            await store.finish_attempt(
                got.rollout.rollout_id, got.attempt.attempt_id, AttemptFinish(status="succeeded", reward=1.0)
            )

    worker = asyncio.create_task(work())
    result = await store.wait_for_rollouts([b.rollout_id, a.rollout_id], timeout_s=10)
    await worker
    assert result.pending == []
    assert [r.rollout_id for r in result.finished] == [b.rollout_id, a.rollout_id]
    assert all(r.status is RolloutStatus.SUCCEEDED and r.reward == 1.0 for r in result.finished)


async def test_wait_for_rollouts_reports_pending_ones_after_the_timeout(store: Store) -> None:
    [a, b] = await enqueue(store, 2)
    await store.cancel(a.rollout_id)
    result = await store.wait_for_rollouts([a.rollout_id, b.rollout_id], timeout_s=0.2)
    assert [r.rollout_id for r in result.finished] == [a.rollout_id]
    assert result.pending == [b.rollout_id]


async def test_wait_for_unknown_rollouts_raises_not_found(store: Store) -> None:
    [a] = await enqueue(store, 1)
    with pytest.raises(NotFound, match="rollout nope does not exist"):
        await store.wait_for_rollouts([a.rollout_id, "nope"], timeout_s=5)


async def test_latest_model_version_is_the_highest(store: Store) -> None:
    assert await store.latest_model_version() is None
    await store.add_model_version(ModelVersionCreate(version=2, model="qwen", checkpoint="/ckpt/2"))
    await store.add_model_version(ModelVersionCreate(version=1, model="qwen", metadata={"step": 10}))
    latest = await store.latest_model_version()
    assert latest is not None
    assert (latest.version, latest.model, latest.checkpoint) == (2, "qwen", "/ckpt/2")
    with pytest.raises(Conflict, match="model version 2"):
        await store.add_model_version(ModelVersionCreate(version=2, model="other"))
