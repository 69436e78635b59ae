"""Which attempt a gateway call belongs to (gateway/attribution.py): each rule, and each refusal."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from starlette.datastructures import Headers

from agentbolt.errors import NotFound
from agentbolt.gateway.attribution import (
    AGENT_HEADER,
    ATTEMPT_HEADER,
    ROLLOUT_HEADER,
    AttemptGate,
    call_context,
)
from agentbolt.gateway.errors import GatewayError
from agentbolt.store import Store
from agentbolt.types import AttemptFinish, RolloutCreate

TRACE_ID, SPAN_ID = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"


def _headers(**values: str) -> Headers:
    return Headers(values)


# --- call_context: path, headers, trace position, agent name -------------------------------------------


def test_a_call_without_path_or_headers_is_unattributed_with_a_fresh_trace() -> None:
    context = call_context(None, None, _headers())
    assert (context.rollout_id, context.attempt_id, context.parent_id, context.agent_name) == (None, None, None, None)
    assert len(context.trace_id) == 32 and int(context.trace_id, 16) != 0
    assert call_context(None, None, _headers()).trace_id != context.trace_id


def test_the_path_attributes_a_call_to_its_attempt() -> None:
    context = call_context("ro-1", "at-1", _headers())
    assert (context.rollout_id, context.attempt_id) == ("ro-1", "at-1")


def test_the_two_headers_attribute_a_call_sent_to_the_plain_base_url() -> None:
    context = call_context(None, None, _headers(**{ROLLOUT_HEADER: "ro-1", ATTEMPT_HEADER: "at-1"}))
    assert (context.rollout_id, context.attempt_id) == ("ro-1", "at-1")


def test_headers_that_repeat_the_path_are_accepted() -> None:
    context = call_context("ro-1", "at-1", _headers(**{ROLLOUT_HEADER: "ro-1", ATTEMPT_HEADER: "at-1"}))
    assert (context.rollout_id, context.attempt_id) == ("ro-1", "at-1")


@pytest.mark.parametrize(
    ("given", "missing"),
    [(ROLLOUT_HEADER, ATTEMPT_HEADER), (ATTEMPT_HEADER, ROLLOUT_HEADER)],
    ids=["rollout", "attempt"],
)
def test_one_attribution_header_without_the_other_is_refused_naming_the_missing_one(given: str, missing: str) -> None:
    with pytest.raises(GatewayError, match="give both") as refused:
        call_context(None, None, _headers(**{given: "x"}))
    assert (refused.value.http_status, refused.value.param) == (400, missing)


@pytest.mark.parametrize(
    "headers",
    [{ROLLOUT_HEADER: "ro-2", ATTEMPT_HEADER: "at-1"}, {ROLLOUT_HEADER: "ro-1", ATTEMPT_HEADER: "at-2"}],
    ids=["other rollout", "other attempt"],
)
def test_headers_that_contradict_the_path_are_refused(headers: dict[str, str]) -> None:
    with pytest.raises(GatewayError, match="drop one of them") as refused:
        call_context("ro-1", "at-1", _headers(**headers))
    assert (refused.value.http_status, refused.value.param) == (400, ROLLOUT_HEADER)


def test_a_valid_traceparent_makes_the_call_a_child_of_the_callers_span() -> None:
    context = call_context(None, None, _headers(traceparent=f"00-{TRACE_ID.upper()}-{SPAN_ID}-01"))
    assert (context.trace_id, context.parent_id) == (TRACE_ID, SPAN_ID)


@pytest.mark.parametrize(
    "traceparent",
    [
        f"ff-{TRACE_ID}-{SPAN_ID}-01",  # version ff is invalid
        f"00-{'0' * 32}-{SPAN_ID}-01",  # all-zero trace id
        f"00-{TRACE_ID}-{'0' * 16}-01",  # all-zero parent id
        f"00-{TRACE_ID[:-1]}-{SPAN_ID}-01",  # too short
        "not a traceparent",
        "",
    ],
)
def test_an_invalid_traceparent_is_ignored(traceparent: str) -> None:
    context = call_context(None, None, _headers(traceparent=traceparent))
    assert context.parent_id is None and context.trace_id != TRACE_ID and len(context.trace_id) == 32


def test_the_agent_header_names_the_agent_and_an_empty_one_names_none() -> None:
    assert call_context(None, None, _headers(**{AGENT_HEADER: "planner"})).agent_name == "planner"
    assert call_context(None, None, _headers(**{AGENT_HEADER: ""})).agent_name is None


# --- AttemptGate: running attempts pass; unknown ones are 404, finished ones 409 -----------------------


class CountingStore:
    """A real store that counts attempt lookups (the gate's cache is what is tested)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.lookups = 0

    async def get_attempt(self, rollout_id: str, attempt_id: str) -> Any:
        self.lookups += 1
        return await self.store.get_attempt(rollout_id, attempt_id)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    store = Store(f"sqlite+aiosqlite:///{tmp_path / 'gate.db'}")
    await store.open()
    yield store
    await store.close()


async def _running_attempt(store: Store) -> tuple[str, str]:
    await store.enqueue([RolloutCreate(input=1)])
    claim = await store.dequeue("w")
    assert claim is not None
    return claim.rollout.rollout_id, claim.attempt.attempt_id


def _gate(store: Store, ttl_s: float) -> tuple[AttemptGate, CountingStore]:
    counting = CountingStore(store)
    return AttemptGate(counting, ttl_s=ttl_s), counting  # type: ignore[arg-type]


async def test_a_running_attempt_passes_and_is_looked_up_once_within_the_ttl(store: Store) -> None:
    rollout_id, attempt_id = await _running_attempt(store)
    gate, counting = _gate(store, ttl_s=3600)
    await gate.check(rollout_id, attempt_id)
    await gate.check(rollout_id, attempt_id)
    assert counting.lookups == 1


async def test_an_unknown_rollout_or_attempt_is_not_found(store: Store) -> None:
    rollout_id, attempt_id = await _running_attempt(store)
    gate, _ = _gate(store, ttl_s=3600)
    with pytest.raises(NotFound):
        await gate.check("ro-nope", attempt_id)
    with pytest.raises(NotFound):
        await gate.check(rollout_id, "at-nope")


async def test_a_known_attempt_named_with_another_rollout_is_looked_up_and_not_found(store: Store) -> None:
    rollout_id, attempt_id = await _running_attempt(store)
    gate, counting = _gate(store, ttl_s=3600)
    await gate.check(rollout_id, attempt_id)
    with pytest.raises(NotFound):
        await gate.check("ro-other", attempt_id)
    assert counting.lookups == 2


async def test_an_attempt_finished_in_the_store_is_refused_with_409_and_remembered(store: Store) -> None:
    rollout_id, attempt_id = await _running_attempt(store)
    await store.finish_attempt(rollout_id, attempt_id, AttemptFinish(status="succeeded"))
    gate, counting = _gate(store, ttl_s=0)
    for _ in range(2):
        with pytest.raises(GatewayError, match="has finished") as refused:
            await gate.check(rollout_id, attempt_id)
        assert (refused.value.http_status, refused.value.code) == (409, "attempt_finished")
    assert counting.lookups == 1  # finished is final: never looked up again


async def test_an_attempt_the_finish_route_reports_is_refused_without_a_lookup(store: Store) -> None:
    rollout_id, attempt_id = await _running_attempt(store)
    gate, counting = _gate(store, ttl_s=3600)
    await gate.check(rollout_id, attempt_id)
    gate.finished(rollout_id, attempt_id)
    with pytest.raises(GatewayError, match="has finished"):
        await gate.check(rollout_id, attempt_id)
    assert counting.lookups == 1


async def test_an_attempt_ended_elsewhere_is_noticed_once_its_cached_state_expires(store: Store) -> None:
    rollout_id, attempt_id = await _running_attempt(store)
    cached, _ = _gate(store, ttl_s=3600)
    expired, _ = _gate(store, ttl_s=0)
    for gate in (cached, expired):
        await gate.check(rollout_id, attempt_id)
    await store.finish_attempt(rollout_id, attempt_id, AttemptFinish(status="succeeded"))  # e.g. another process
    await cached.check(rollout_id, attempt_id)  # still within its ttl: the cached "running" holds
    with pytest.raises(GatewayError, match="has finished"):
        await expired.check(rollout_id, attempt_id)
