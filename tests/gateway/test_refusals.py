"""Bad input, attribution and attempt rules: each a 4xx in OpenAI's error shape, nothing generated or stored."""

from __future__ import annotations

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
    stored_spans,
    wait_recorded,
)

USER = [{"role": "user", "content": "hi"}]


@pytest.fixture
def backend(tokenizer: Any) -> ScriptedBackend:
    return ScriptedBackend(tokenizer, ["Hello there."], max_context=64)


@pytest.fixture
def server(start_server: StartServer, backend: ScriptedBackend) -> Any:
    return start_server(backend, max_n=4)


BAD_CHAT: list[tuple[str, dict[str, Any], int, str | None]] = [
    ("unknown model", {"model": "gpt-4o", "messages": USER}, 404, "model"),
    ("no messages", {"model": MODEL, "messages": []}, 400, "messages"),
    ("unknown role", {"model": MODEL, "messages": [{"role": "robot", "content": "x"}]}, 400, "messages.0.role"),
    ("user without content", {"model": MODEL, "messages": [{"role": "user"}]}, 400, "messages.0"),
    (
        "image part",
        {"model": MODEL, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
        400,
        "messages.0.content.0",
    ),
    ("functions", {"model": MODEL, "messages": USER, "functions": [{"name": "f"}]}, 400, "functions"),
    ("audio", {"model": MODEL, "messages": USER, "audio": {"voice": "x"}}, 400, "audio"),
    ("modalities", {"model": MODEL, "messages": USER, "modalities": ["text", "audio"]}, 400, "modalities"),
    ("unknown parameter", {"model": MODEL, "messages": USER, "best_guess": True}, 400, "best_guess"),
    ("n above the limit", {"model": MODEL, "messages": USER, "n": 5}, 400, "n"),
    ("n zero", {"model": MODEL, "messages": USER, "n": 0}, 400, "n"),
    ("temperature too high", {"model": MODEL, "messages": USER, "temperature": 3}, 400, "temperature"),
    ("penalty", {"model": MODEL, "messages": USER, "presence_penalty": 0.5}, 400, "presence_penalty"),
    (
        "json mode",
        {"model": MODEL, "messages": USER, "response_format": {"type": "json_object"}},
        400,
        "response_format",
    ),
    ("top_logprobs without logprobs", {"model": MODEL, "messages": USER, "top_logprobs": 2}, 400, "top_logprobs"),
    (
        "prompt over the context",
        {"model": MODEL, "messages": [{"role": "user", "content": "word " * 80}]},
        400,
        "messages",
    ),
    ("max_tokens over the context", {"model": MODEL, "messages": USER, "max_tokens": 60}, 400, "max_tokens"),
    (
        "tool_choice names no tool",
        {"model": MODEL, "messages": USER, "tool_choice": {"type": "function", "function": {"name": "f"}}},
        400,
        "messages",
    ),
    (
        "bad tool name",
        {"model": MODEL, "messages": USER, "tools": [{"type": "function", "function": {"name": "a b"}}]},
        400,
        "tools.0.function.name",
    ),
]


@pytest.mark.parametrize(("case", "body", "status", "param"), BAD_CHAT, ids=[c[0] for c in BAD_CHAT])
def test_bad_chat_request_is_a_4xx_naming_the_field_and_nothing_is_generated_or_stored(
    server: Any, backend: ScriptedBackend, case: str, body: dict[str, Any], status: int, param: str | None
) -> None:
    rollout_id, attempt_id = claim_attempt(server.url)
    r = httpx.post(f"{attempt_url(server.url, rollout_id, attempt_id)}/chat/completions", json=body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["param"] == param
    assert backend.requests == []
    finish_attempt(server.url, rollout_id, attempt_id)
    assert llm_spans(server.url, rollout_id) == []


def test_error_type_is_openais_category_and_code_the_specific_reason(server: Any) -> None:
    cases = [
        ({"model": "gpt-4o", "messages": USER}, 404, "model_not_found"),
        ({"model": MODEL, "messages": USER, "temperature": 3}, 400, "invalid_value"),
        ({"model": MODEL, "messages": USER, "best_guess": True}, 400, "unsupported_parameter"),
        ({"model": MODEL, "messages": USER, "max_tokens": 60}, 400, "context_length_exceeded"),
    ]
    for body, status, code in cases:
        r = httpx.post(f"{server.url}/v1/chat/completions", json=body)
        assert r.status_code == status, r.text
        assert (r.json()["error"]["type"], r.json()["error"]["code"]) == ("invalid_request_error", code)


def test_a_tool_message_without_an_id_is_accepted_as_the_schema_says(server: Any) -> None:
    body = {"model": MODEL, "messages": [*USER, {"role": "tool", "content": "4"}]}
    response = httpx.post(f"{server.url}/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "Hello there."


def test_body_that_is_not_json_is_a_400(server: Any) -> None:
    r = httpx.post(f"{server.url}/v1/chat/completions", content=b"{nope", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"


BAD_COMPLETION: list[tuple[str, dict[str, Any], str]] = [
    ("batch of prompts", {"model": MODEL, "prompt": ["a", "b"]}, "prompt"),
    ("empty prompt", {"model": MODEL, "prompt": ""}, "prompt"),
    ("echo", {"model": MODEL, "prompt": "a", "echo": True}, "echo"),
    ("suffix", {"model": MODEL, "prompt": "a", "suffix": "z"}, "suffix"),
]


@pytest.mark.parametrize(("case", "body", "param"), BAD_COMPLETION, ids=[c[0] for c in BAD_COMPLETION])
def test_bad_completion_request_is_a_400(
    server: Any, backend: ScriptedBackend, case: str, body: dict, param: str
) -> None:
    r = httpx.post(f"{server.url}/v1/completions", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
    assert backend.requests == []


def test_openai_client_sees_bad_input_as_its_typed_errors(server: Any) -> None:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=USER)  # type: ignore[arg-type]
    with pytest.raises(openai.BadRequestError, match="context"):
        client.chat.completions.create(model=MODEL, messages=USER, max_tokens=1000)  # type: ignore[arg-type]


def test_unknown_rollout_or_attempt_is_a_404(server: Any, backend: ScriptedBackend) -> None:
    rollout_id, attempt_id = claim_attempt(server.url)
    for rid, aid in (("nope", attempt_id), (rollout_id, "nope")):
        r = httpx.post(f"{attempt_url(server.url, rid, aid)}/chat/completions", json={"model": MODEL, "messages": USER})
        assert r.status_code == 404, r.text
        assert "does not exist" in r.json()["error"]["message"]
    assert backend.requests == []


def test_calls_of_a_finished_attempt_are_refused_with_409_and_not_retried(
    server: Any, backend: ScriptedBackend
) -> None:
    rollout_id, attempt_id = claim_attempt(server.url)
    client = openai.OpenAI(base_url=attempt_url(server.url, rollout_id, attempt_id), api_key="unused")
    client.chat.completions.create(model=MODEL, messages=USER)  # type: ignore[arg-type]
    finish_attempt(server.url, rollout_id, attempt_id)
    with pytest.raises(openai.ConflictError, match="has finished"):
        client.chat.completions.create(model=MODEL, messages=USER)  # type: ignore[arg-type]
    assert len(backend.requests) == 1  # the 409 was not retried (x-should-retry: false)
    assert len(llm_spans(server.url, rollout_id)) == 1


def test_headers_attribute_a_call_and_traceparent_and_agent_name_land_on_the_span(server: Any) -> None:
    rollout_id, attempt_id = claim_attempt(server.url)
    trace_id, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    headers = {
        "X-Agentbolt-Rollout-Id": rollout_id,
        "X-Agentbolt-Attempt-Id": attempt_id,
        "traceparent": f"00-{trace_id}-{parent}-01",
        "X-Agentbolt-Agent": "planner",
    }
    r = httpx.post(f"{server.url}/v1/chat/completions", json={"model": MODEL, "messages": USER}, headers=headers)
    assert r.status_code == 200, r.text
    finish_attempt(server.url, rollout_id, attempt_id)
    [span] = llm_spans(server.url, rollout_id)
    assert (span["attempt_id"], span["trace_id"], span["parent_id"]) == (attempt_id, trace_id, parent)
    assert span["attributes"]["agentbolt.llm.agent_name"] == "planner"


def test_headers_that_contradict_the_path_or_name_half_an_attempt_are_a_400(server: Any) -> None:
    rollout_id, attempt_id = claim_attempt(server.url)
    body = {"model": MODEL, "messages": USER}
    r = httpx.post(f"{server.url}/v1/chat/completions", json=body, headers={"X-Agentbolt-Rollout-Id": rollout_id})
    assert r.status_code == 400
    r = httpx.post(
        f"{attempt_url(server.url, rollout_id, attempt_id)}/chat/completions",
        json=body,
        headers={"X-Agentbolt-Rollout-Id": rollout_id, "X-Agentbolt-Attempt-Id": "other"},
    )
    assert r.status_code == 400


def test_call_without_an_attempt_is_stored_unattributed(server: Any) -> None:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused")
    reply = client.chat.completions.create(model=MODEL, messages=USER)  # type: ignore[arg-type]
    assert reply.choices[0].message.content == "Hello there."
    [span] = stored_spans(server, None)
    assert span.rollout_id is None and span.attempt_id is None
    assert span.attributes["agentbolt.llm.model_version"] == 7


def test_server_that_requires_an_attempt_refuses_unattributed_calls_with_403(
    start_server: StartServer, backend: ScriptedBackend
) -> None:
    server = start_server(backend, require_attempt=True)
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused")
    with pytest.raises(openai.PermissionDeniedError, match="rollout attempt"):
        client.chat.completions.create(model=MODEL, messages=USER)  # type: ignore[arg-type]
    rollout_id, attempt_id = claim_attempt(server.url)
    attributed = openai.OpenAI(base_url=attempt_url(server.url, rollout_id, attempt_id), api_key="unused")
    assert attributed.chat.completions.create(model=MODEL, messages=USER).choices  # type: ignore[arg-type]
    assert backend.requests and len(backend.requests) == 1
    assert wait_recorded(server.url)["refused"] == 1
