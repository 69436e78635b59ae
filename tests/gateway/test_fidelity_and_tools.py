"""Token fidelity across turns and tool calls through the gateway, with a scripted backend (exact replies)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

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
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "add",
            "description": "Add two numbers.",
            "parameters": {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}}},
        },
    }
]
CALL_TEXT = 'Let me add.\n<tool_call>{"name": "add", "arguments": {"a": 2, "b": 3}}</tool_call>'


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


def test_tool_call_reply_becomes_openai_tool_calls_and_is_recorded(start_server: StartServer, tokenizer: Any) -> None:
    server = start_server(ScriptedBackend(tokenizer, [CALL_TEXT, "It is 5."]))
    rollout_id, attempt_id = claim_attempt(server.url)
    client = openai.OpenAI(base_url=attempt_url(server.url, rollout_id, attempt_id), api_key="unused")
    messages: list[Any] = [{"role": "user", "content": "What is 2 + 3?"}]
    reply = client.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS)  # type: ignore[arg-type]
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Let me add."
    [call] = choice.message.tool_calls or []
    assert call.function.name == "add" and json.loads(call.function.arguments) == {"a": 2, "b": 3}

    # The agent sends the call back with re-serialised arguments (as LangChain does) and the tool's result.
    echoed = {
        "role": "assistant",
        "content": choice.message.content,
        "tool_calls": [{"id": call.id, "type": "function", "function": {"name": "add", "arguments": '{"a":2,"b":3}'}}],
    }
    messages += [echoed, {"role": "tool", "tool_call_id": call.id, "content": "5"}]
    final = client.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS)  # type: ignore[arg-type]
    assert final.choices[0].message.content == "It is 5." and final.choices[0].finish_reason == "stop"
    finish_attempt(server.url, rollout_id, attempt_id)

    first, second = (s["attributes"] for s in llm_spans(server.url, rollout_id))
    assert json.loads(first["agentbolt.llm.tool_calls"]) == [call.model_dump(exclude_none=True)]
    assert first["agentbolt.llm.tool_call_malformed"] is False
    assert first["gen_ai.response.finish_reasons"] == ["tool_calls"]
    # The assistant turn was rendered from the model's own text: the prompt repeats its exact tokens.
    assert second["agentbolt.llm.fidelity_mismatch"] is False
    repeated = first["agentbolt.llm.prompt_token_ids"] + first["agentbolt.llm.response_token_ids"]
    assert second["agentbolt.llm.prompt_token_ids"][: len(repeated)] == repeated


def test_malformed_tool_call_is_returned_as_text_and_flagged(start_server: StartServer, tokenizer: Any) -> None:
    broken = '<tool_call>{"name": "add", "arguments": {"a": 2,</tool_call>'
    server = start_server(ScriptedBackend(tokenizer, [broken]))
    rollout_id, attempt_id = claim_attempt(server.url)
    client = openai.OpenAI(base_url=attempt_url(server.url, rollout_id, attempt_id), api_key="unused")
    reply = client.chat.completions.create(model=MODEL, messages=FIRST, tools=TOOLS)  # type: ignore[arg-type]
    assert reply.choices[0].message.content == broken
    assert not reply.choices[0].message.tool_calls and reply.choices[0].finish_reason == "stop"
    finish_attempt(server.url, rollout_id, attempt_id)
    [span] = llm_spans(server.url, rollout_id)
    assert span["attributes"]["agentbolt.llm.tool_call_malformed"] is True
    assert span["attributes"]["agentbolt.llm.tool_call_error"]


def test_streamed_tool_call_reassembles_in_the_openai_client(start_server: StartServer, tokenizer: Any) -> None:
    server = start_server(ScriptedBackend(tokenizer, [CALL_TEXT]))
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused")
    with client.chat.completions.stream(
        model=MODEL,
        messages=FIRST,
        tools=TOOLS,
        stream_options={"include_usage": True},  # type: ignore[arg-type]
    ) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content == "Let me add."
    [call] = choice.message.tool_calls or []
    assert (call.function.name, json.loads(call.function.arguments)) == ("add", {"a": 2, "b": 3})
    assert final.usage is not None and final.usage.completion_tokens > 0
