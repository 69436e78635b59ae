"""Span ingest: attribution checks, idempotency, per-attempt sequence numbers, queries."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import ValidationError

from agentbolt.errors import BadInput, NotFound
from agentbolt.store import Store
from agentbolt.types import AttemptFinish, SpanEvent, SpanLink, SpanStatus, SpanStatusCode

from .factories import claim, span


async def test_spans_are_numbered_per_attempt_in_arrival_order(store: Store) -> None:
    a = await claim(store, config={"max_attempts": 2, "retry_on": ["failed"]})
    rid, first = a.rollout.rollout_id, a.attempt.attempt_id
    # Within one call, start-time order decides; across calls, arrival order.
    await store.add_spans([span(rid, first, start=30, name="c"), span(rid, first, start=10, name="a")])
    await store.add_spans([span(rid, first, start=5, name="late-but-early-start")])
    await store.finish_attempt(rid, first, AttemptFinish(status="failed"))
    b = await store.dequeue("w")
    assert b is not None and b.rollout.rollout_id == rid
    second = b.attempt.attempt_id
    await store.add_spans([span(rid, second, start=1, name="x"), span(rid, first, start=99, name="d")])

    page = await store.query_spans(rid)
    got = [(s.attempt_id, s.sequence_id, s.name) for s in page.items]
    assert got == [
        (first, 0, "a"),
        (first, 1, "c"),
        (first, 2, "late-but-early-start"),
        (first, 3, "d"),
        (second, 0, "x"),
    ]
    only_second = await store.query_spans(rid, second)
    assert [(s.sequence_id, s.name) for s in only_second.items] == [(0, "x")]


async def test_rollout_level_and_unattributed_spans_have_their_own_counters(store: Store) -> None:
    got = await claim(store)
    rid, aid = got.rollout.rollout_id, got.attempt.attempt_id
    await store.add_spans([span(rid, aid, name="in-attempt"), span(rid, None, name="rollout-level")])
    await store.add_spans([span(None, None, name="gateway-1"), span(rid, None, name="rollout-level-2")])
    await store.add_spans([span(None, None, name="gateway-2")])

    page = await store.query_spans(rid)
    # Rollout-level spans come before the attempts' spans.
    assert [(s.attempt_id, s.sequence_id, s.name) for s in page.items] == [
        (None, 0, "rollout-level"),
        (None, 1, "rollout-level-2"),
        (aid, 0, "in-attempt"),
    ]
    unattributed = await store.query_spans(None)
    assert [(s.rollout_id, s.sequence_id, s.name) for s in unattributed.items] == [
        (None, 0, "gateway-1"),
        (None, 1, "gateway-2"),
    ]


async def test_adding_the_same_spans_again_stores_them_once(store: Store) -> None:
    got = await claim(store)
    rid, aid = got.rollout.rollout_id, got.attempt.attempt_id
    batch = [span(rid, aid, start=i) for i in range(6)]
    first = await store.add_spans(batch)
    assert (first.inserted, first.duplicates) == (6, 0)
    again = await store.add_spans(batch)
    assert (again.inserted, again.duplicates) == (0, 6)
    mixed = await store.add_spans([batch[0], span(rid, aid, start=7), batch[0]])  # repeated within the batch too
    assert (mixed.inserted, mixed.duplicates) == (1, 2)
    page = await store.query_spans(rid, aid)
    assert page.total == 7
    assert [s.sequence_id for s in page.items] == list(range(7))  # duplicates leave no gaps


async def test_concurrent_identical_batches_store_each_span_once(store: Store, store_url: str) -> None:
    got = await claim(store)
    rid, aid = got.rollout.rollout_id, got.attempt.attempt_id
    batch = [span(rid, aid, start=i) for i in range(6)]
    other = Store(store_url)
    await other.open()
    try:
        results = await asyncio.gather(*((store if i % 2 else other).add_spans(batch) for i in range(8)))
    finally:
        await other.close()
    assert sum(r.inserted for r in results) == 6
    assert sum(r.duplicates for r in results) == 6 * 7
    page = await store.query_spans(rid, aid)
    assert [s.sequence_id for s in page.items] == list(range(6))


async def test_concurrent_batches_for_one_attempt_get_distinct_sequence_ids(store: Store, store_url: str) -> None:
    got = await claim(store)
    rid, aid = got.rollout.rollout_id, got.attempt.attempt_id
    other = Store(store_url)
    await other.open()
    try:
        await asyncio.gather(
            *((store if i % 2 else other).add_spans([span(rid, aid, start=j) for j in range(3)]) for i in range(10))
        )
    finally:
        await other.close()
    page = await store.query_spans(rid, aid)
    assert sorted(s.sequence_id for s in page.items) == list(range(30))


@pytest.mark.parametrize("bad", ["unknown-rollout", "unknown-attempt", "attempt-of-other-rollout"])
async def test_a_span_naming_an_unknown_rollout_or_attempt_stores_nothing(store: Store, bad: str) -> None:
    got = await claim(store)
    other = await claim(store)
    rid, aid = got.rollout.rollout_id, got.attempt.attempt_id
    wrong = {
        "unknown-rollout": span("ro-nope", None),
        "unknown-attempt": span(rid, "at-nope"),
        "attempt-of-other-rollout": span(rid, other.attempt.attempt_id),
    }[bad]
    with pytest.raises(NotFound, match=wrong.span_id) as raised:
        await store.add_spans([span(rid, aid), span(None, None), wrong])
    assert "nothing" in str(raised.value) or "no span" in str(raised.value)
    assert (await store.query_spans(rid)).total == 0
    assert (await store.query_spans(None)).total == 0


async def test_spans_keep_all_their_fields(store: Store) -> None:
    got = await claim(store)
    rid, aid = got.rollout.rollout_id, got.attempt.attempt_id
    sent = span(
        rid,
        aid,
        start=1_700_000_000_123_456_789,
        name="chat qwen",
        parent_id="0123456789abcdef",
        kind="CLIENT",
        attributes={"gen_ai.usage.input_tokens": 12, "ids": [1, 2, 3], "ok": True, "x": 0.5, "none": None},
        events=[SpanEvent(name="exception", time_ns=5, attributes={"exception.type": "KeyError"})],
        links=[SpanLink(trace_id="ab" * 16, span_id="cd" * 8, attributes={"why": "retry"})],
        status=SpanStatus(code=SpanStatusCode.ERROR, message="boom ✗"),
        resource={"service.name": "agent"},
        scope="openinference.langchain",
    )
    await store.add_spans([sent])
    [stored] = (await store.query_spans(rid)).items
    assert stored.model_dump(exclude={"sequence_id"}) == sent.model_dump()
    assert stored.sequence_id == 0


async def test_spans_of_finished_attempts_are_accepted(store: Store) -> None:
    got = await claim(store)
    rid, aid = got.rollout.rollout_id, got.attempt.attempt_id
    await store.finish_attempt(rid, aid, AttemptFinish(status="succeeded"))
    assert (await store.add_spans([span(rid, aid)])).inserted == 1


async def test_query_spans_paginates_in_order(store: Store) -> None:
    got = await claim(store)
    rid, aid = got.rollout.rollout_id, got.attempt.attempt_id
    await store.add_spans([span(rid, aid, start=i, name=f"s{i}") for i in range(7)])
    first = await store.query_spans(rid, limit=3)
    rest = await store.query_spans(rid, limit=3, offset=3)
    last = await store.query_spans(rid, limit=3, offset=6)
    assert (first.total, first.limit, first.offset) == (7, 3, 0)
    names = [s.name for p in (first, rest, last) for s in p.items]
    assert names == [f"s{i}" for i in range(7)]


async def test_query_spans_names_what_is_unknown(store: Store) -> None:
    got = await claim(store)
    with pytest.raises(NotFound, match="rollout nope"):
        await store.query_spans("nope")
    with pytest.raises(NotFound, match="attempt at-nope"):
        await store.query_spans(got.rollout.rollout_id, "at-nope")
    with pytest.raises(BadInput, match="without its rollout"):
        await store.query_spans(None, got.attempt.attempt_id)


async def test_span_times_beyond_64_bits_are_refused(store: Store) -> None:
    got = await claim(store)
    with pytest.raises(ValidationError, match="start_time_ns"):  # the type's bound: a signed 64-bit integer
        span(got.rollout.rollout_id, got.attempt.attempt_id, start=2**63)
    # The store's own check stays, for a span built without validation.
    unchecked = span(got.rollout.rollout_id, got.attempt.attempt_id).model_copy(update={"start_time_ns": 2**64})
    with pytest.raises(BadInput, match="start_time_ns"):
        await store.add_spans([unchecked])


async def test_spans_of_rollouts_returns_every_span_of_each_in_sequence_order(store: Store) -> None:
    a = await claim(store, config={"max_attempts": 2, "retry_on": ["failed"]})
    rid, first = a.rollout.rollout_id, a.attempt.attempt_id
    await store.add_spans([span(rid, first, start=30, name="c"), span(rid, first, start=10, name="a")])
    await store.add_spans([span(rid, None, name="rollout-level"), span(None, None, name="unattributed")])
    await store.finish_attempt(rid, first, AttemptFinish(status="failed"))
    retry = await store.dequeue("w")
    assert retry is not None and retry.rollout.rollout_id == rid
    second = retry.attempt.attempt_id
    await store.add_spans([span(rid, second, start=1, name="x")])
    other = await claim(store)
    await store.add_spans([span(other.rollout.rollout_id, other.attempt.attempt_id, name="o")])
    empty = await claim(store)

    ids = [empty.rollout.rollout_id, other.rollout.rollout_id, rid]
    got = await store.spans_of_rollouts(ids)
    assert list(got) == ids
    assert [(s.attempt_id, s.sequence_id, s.name) for s in got[rid]] == [
        (None, 0, "rollout-level"),
        (first, 0, "a"),
        (first, 1, "c"),
        (second, 0, "x"),
    ]
    assert got[rid] == (await store.query_spans(rid)).items
    assert [s.name for s in got[other.rollout.rollout_id]] == ["o"]
    assert got[empty.rollout.rollout_id] == []
    assert await store.spans_of_rollouts([]) == {}


async def test_spans_of_rollouts_is_not_paged(store: Store) -> None:
    got = await claim(store)
    rid, aid = got.rollout.rollout_id, got.attempt.attempt_id
    await store.add_spans([span(rid, aid, start=i) for i in range(1200)])  # more than one query_spans page
    assert [s.sequence_id for s in (await store.spans_of_rollouts([rid]))[rid]] == list(range(1200))


async def test_spans_of_unknown_rollouts_raise_not_found(store: Store) -> None:
    got = await claim(store)
    with pytest.raises(NotFound, match="rollout nope, gone does not exist"):
        await store.spans_of_rollouts(["nope", got.rollout.rollout_id, "gone"])
