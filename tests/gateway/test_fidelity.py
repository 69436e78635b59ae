"""Token fidelity: the rule itself (FidelityTracker), and across turns through the gateway with a scripted
backend (exact replies)."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from agentbolt.gateway.fidelity import FidelityTracker, Turn, message_key
from tests.gateway.live_gateway import (
    MODEL,
    ScriptedBackend,
    StartServer,
    attempt_url,
    claim_attempt,
    finish_attempt,
    llm_spans,
)

FIRST = [{"role": "user", "content": "Say hello."}]


# --- the rule ------------------------------------------------------------------------------------


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


# --- through the gateway -------------------------------------------------------------------------


def spelled_out(tokenizer: Any, text: str) -> list[int]:
    """``text`` as one token per character, then end-of-turn: ids no tokenizer would produce from the text."""
    ids = [tokenizer.convert_tokens_to_ids(c) for c in text]
    assert tokenizer.decode(ids) == text and tokenizer.encode(text, add_special_tokens=False) != ids
    return [*ids, tokenizer.eos_token_id]


def two_turns(url: str, reply: str) -> tuple[str, str, openai.OpenAI, list[dict[str, Any]]]:
    rollout_id, attempt_id = claim_attempt(url)
    client = openai.OpenAI(base_url=attempt_url(url, rollout_id, attempt_id), api_key="unused")
    first = client.chat.completions.create(model=MODEL, messages=FIRST)  # type: ignore[arg-type]
    assert first.choices[0].message.content == reply
    second = [*FIRST, {"role": "assistant", "content": reply}, {"role": "user", "content": "Again."}]
    return rollout_id, attempt_id, client, second


def fidelity(url: str, rollout_id: str) -> dict[str, Any]:
    r = httpx.get(f"{url}/api/rollouts/{rollout_id}/fidelity")
    assert r.status_code == 200, r.text
    return r.json()


def test_next_turn_that_repeats_the_models_tokens_passes_the_fidelity_check(
    start_server: StartServer, tokenizer: Any
) -> None:
    server = start_server(ScriptedBackend(tokenizer, ["Hello there."]))
    rollout_id, attempt_id, client, second = two_turns(server.url, "Hello there.")
    client.chat.completions.create(model=MODEL, messages=second)  # type: ignore[arg-type]
    client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Unrelated."}])  # type: ignore[arg-type]
    finish_attempt(server.url, rollout_id, attempt_id)
    flags = [s["attributes"].get("agentbolt.llm.fidelity_mismatch") for s in llm_spans(server.url, rollout_id)]
    assert flags == [None, False, None]  # first call: nothing to extend; third: extends nothing
    report = fidelity(server.url, rollout_id)
    assert (report["checked"], report["mismatches"]) == (1, 0)


def test_next_turn_whose_tokens_differ_from_what_the_model_produced_is_flagged_and_counted(
    start_server: StartServer, tokenizer: Any
) -> None:
    backend = ScriptedBackend(tokenizer, [spelled_out(tokenizer, "Hello"), "Fine."])
    server = start_server(backend)
    rollout_id, attempt_id, client, second = two_turns(server.url, "Hello")
    assert client.chat.completions.create(model=MODEL, messages=second).choices[0].message.content == "Fine."  # type: ignore[arg-type]
    finish_attempt(server.url, rollout_id, attempt_id)
    spans = llm_spans(server.url, rollout_id)
    assert spans[1]["attributes"]["agentbolt.llm.fidelity_mismatch"] is True
    report = fidelity(server.url, rollout_id)
    assert (report["checked"], report["mismatches"]) == (1, 1)
    assert report["mismatched_span_ids"] == [spans[1]["span_id"]]
    stats = httpx.get(f"{server.url}/api/gateway/stats").json()
    assert (stats["fidelity_checked"], stats["fidelity_mismatches"]) == (1, 1)


def test_strict_mode_refuses_the_mismatched_call_with_409_before_generating(
    start_server: StartServer, tokenizer: Any
) -> None:
    backend = ScriptedBackend(tokenizer, [spelled_out(tokenizer, "Hello"), "Fine."])
    server = start_server(backend, strict_token_fidelity=True)
    rollout_id, attempt_id, client, second = two_turns(server.url, "Hello")
    with pytest.raises(openai.ConflictError, match="token fidelity"):
        client.chat.completions.create(model=MODEL, messages=second)  # type: ignore[arg-type]
    assert len(backend.requests) == 1
    finish_attempt(server.url, rollout_id, attempt_id)
    assert len(llm_spans(server.url, rollout_id)) == 1
    report = fidelity(server.url, rollout_id)
    assert (report["checked"], report["mismatches"], report["refused"]) == (1, 1, 1)
