"""Units of the gateway: per-token text pieces, stop strings, the batching span recorder, the fidelity rule."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path
from typing import Any

import pytest

from agentbolt.gateway.fidelity import FidelityTracker, Turn, message_key
from agentbolt.gateway.recorder import SpanRecorder
from agentbolt.gateway.text import TokenText, response_text
from agentbolt.store import Store
from agentbolt.types import RolloutCreate, SpanIn


def test_pieces_join_to_the_decoded_text_even_inside_multibyte_characters(tokenizer: Any) -> None:
    text = TokenText(tokenizer)
    ids = text.encode("Café 😀 naïve 東京!", special_tokens=False)
    pieces = text.pieces(ids)
    assert len(pieces) == len(ids)
    assert "".join(pieces) == text.decode(ids)
    assert "" in pieces  # the emoji spans several byte-level tokens: all but the last carry no text
    assert b"".join(text.token_bytes(i) for i in ids).decode() == text.decode(ids)


def test_stop_string_ends_the_response_at_the_token_that_completed_it(tokenizer: Any) -> None:
    text = TokenText(tokenizer)
    ids = text.encode("One two. Three four.", special_tokens=False)
    cut = response_text(text, [*ids, tokenizer.eos_token_id], frozenset({tokenizer.eos_token_id}), ["Three", "four"])
    assert cut.stopped and cut.text == "One two. "
    assert text.decode(cut.token_ids).endswith("Three")
    assert text.decode(cut.token_ids[: cut.text_tokens]) == "One two."  # the tokens wholly before the stop
    plain = response_text(text, [*ids, tokenizer.eos_token_id], frozenset({tokenizer.eos_token_id}), [])
    assert (plain.text, plain.text_tokens, plain.end_of_turn) == ("One two. Three four.", len(ids), True)


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
        recorder.add(None, lambda: [_span(None, None), _span(None, None)])
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
    recorder.add(None, lambda: [_span(rollout.rollout_id, None)])
    recorder.add("gone", lambda: [_span("no-such-rollout", None), _span("no-such-rollout", None)])
    recorder.add(None, lambda: [_span(None, None)])
    await recorder.flush()
    assert (recorder.recorded, recorder.dropped) == (2, 2)
    assert (await store.query_spans(rollout.rollout_id)).total == 1
    await recorder.aclose()
    await store.close()


async def test_recorder_flush_of_one_attempt_returns_at_once_when_it_has_nothing_pending(tmp_path: Path) -> None:
    store = Store(f"sqlite+aiosqlite:///{tmp_path / 'r.db'}")
    await store.open()
    recorder = SpanRecorder(store, interval_s=5.0)  # a long window: only a flush writes early
    recorder.start()
    recorder.add(None, lambda: [_span(None, None)])
    await asyncio.wait_for(recorder.flush("other-attempt"), 0.5)
    assert recorder.pending == 1
    await asyncio.wait_for(recorder.flush(), 2.0)
    assert recorder.recorded == 1
    await recorder.aclose()
    await store.close()


def test_fidelity_compares_against_the_longest_remembered_conversation_the_call_extends() -> None:
    tracker = FidelityTracker()
    user = {"role": "user", "content": "hi"}
    reply = {"role": "assistant", "content": "yo"}
    tracker.remember("a", Turn((message_key(user),), [1, 2, 3], ((message_key(reply), [7, 8]),)))
    extended = (message_key(user), message_key(reply), message_key({"role": "user", "content": "again"}))
    assert tracker.check("a", extended, [1, 2, 3, 7, 8, 2, 9]) is False
    assert tracker.check("a", extended, [1, 2, 3, 7, 9, 2, 9]) is True
    assert tracker.check("a", (message_key(user),), [1, 2, 3]) is None  # extends nothing
    assert tracker.check("b", extended, [1]) is None  # another attempt
    assert (tracker.checked, tracker.mismatches) == (2, 1)


def test_fidelity_treats_reserialised_tool_arguments_as_the_same_turn() -> None:
    a = {"role": "assistant", "content": None, "tool_calls": [{"function": {"name": "f", "arguments": '{"x": 1}'}}]}
    b = {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f", "arguments": '{"x":1}'}}]}
    assert message_key(a) == message_key(b)
    assert message_key(a) != message_key({**b, "tool_calls": [{"function": {"name": "f", "arguments": '{"x":2}'}}]})


@pytest.mark.parametrize("n", [0, 1])
def test_empty_and_single_token_pieces(tokenizer: Any, n: int) -> None:
    text = TokenText(tokenizer)
    ids = text.encode("Hi", special_tokens=False)[:n]
    assert "".join(text.pieces(ids)) == text.decode(ids)
