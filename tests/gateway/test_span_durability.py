"""When a gateway call's spans are durable: before its answer (answer durability) or by its attempt's finish.

A real server on loopback over a SQLite file; the spans are read from the store directly, never through the
server (whose finish route and reports flush the recorder first). The flush interval is long (10 s), so
a span that is in the store was written because the call waited for it, not by the timer.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from agentbolt.server.background import BackgroundServer
from tests.gateway.live_gateway import (
    MODEL,
    ScriptedBackend,
    StartServer,
    attempt_url,
    claim_attempt,
    finish_attempt,
    spans_in_store,
)

CHAT = [{"role": "user", "content": "Say hi."}]
LONG_INTERVAL_S = 10.0


@pytest.fixture
def answer_server(start_server: StartServer, tokenizer: Any) -> BackgroundServer:
    backend = ScriptedBackend(tokenizer, ["Hi there."])
    return start_server(backend, span_durability="answer", span_flush_interval_s=LONG_INTERVAL_S)


def test_a_call_is_answered_only_once_its_spans_are_stored(answer_server: BackgroundServer) -> None:
    rollout_id, attempt_id = claim_attempt(answer_server.url)
    client = openai.OpenAI(base_url=attempt_url(answer_server.url, rollout_id, attempt_id), api_key="unused")
    reply = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=8)
    [span] = spans_in_store(answer_server, rollout_id)
    assert span.attributes["gen_ai.response.id"] == reply.id.removeprefix("chatcmpl-")
    client.completions.create(model=MODEL, prompt="Hi", max_tokens=4)
    assert len(spans_in_store(answer_server, rollout_id)) == 2
    stats = httpx.get(f"{answer_server.url}/api/gateway/stats").json()
    assert (stats["span_durability"], stats["spans_pending"], stats["spans_recorded"]) == ("answer", 0, 2)


def test_a_stream_ends_only_once_its_spans_are_stored(answer_server: BackgroundServer) -> None:
    rollout_id, attempt_id = claim_attempt(answer_server.url)
    url = attempt_url(answer_server.url, rollout_id, attempt_id) + "/chat/completions"
    body = {"model": MODEL, "messages": CHAT, "max_tokens": 8, "stream": True}
    stored_at: dict[str, int] = {}  # event -> spans in the store when the client had read it
    with httpx.stream("POST", url, json=body, timeout=30) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            data = line.removeprefix("data: ")
            if data == "[DONE]":
                stored_at["done"] = len(spans_in_store(answer_server, rollout_id))
            elif json.loads(data)["choices"][0]["finish_reason"] is not None:
                stored_at["finish_reason"] = len(spans_in_store(answer_server, rollout_id))
    assert stored_at == {"finish_reason": 1, "done": 1}


def test_with_finish_durability_the_answer_goes_first_and_the_finish_stores_the_spans(
    start_server: StartServer, tokenizer: Any
) -> None:
    server = start_server(ScriptedBackend(tokenizer, ["Hi there."]), span_flush_interval_s=LONG_INTERVAL_S)
    assert httpx.get(f"{server.url}/api/gateway/stats").json()["span_durability"] == "finish"  # auto on SQLite
    rollout_id, attempt_id = claim_attempt(server.url)
    client = openai.OpenAI(base_url=attempt_url(server.url, rollout_id, attempt_id), api_key="unused")
    client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=8)
    assert spans_in_store(server, rollout_id) == []  # answered; its span waits for the batch (10 s) or the finish
    finish_attempt(server.url, rollout_id, attempt_id)
    assert len(spans_in_store(server, rollout_id)) == 1
