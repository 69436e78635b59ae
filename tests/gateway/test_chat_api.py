"""The gateway with the real engine (tiny random model) over real HTTP, with the official openai client."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from agentbolt.engine import Engine
from agentbolt.gateway.backend import EngineBackend
from tests.gateway.live_gateway import (
    MODEL,
    StartServer,
    attempt_url,
    claim_attempt,
    finish_attempt,
    llm_spans,
    stored_spans,
)

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}]


@pytest.fixture
def server(start_server: StartServer, tiny_engine: Engine) -> Any:
    return start_server(EngineBackend(tiny_engine, MODEL))


def decode(tokenizer: Any, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def chat_prompt_ids(tokenizer: Any, messages: list[dict[str, Any]]) -> list[int]:
    """The prompt ids transformers itself renders for ``messages``."""
    return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)["input_ids"])


def text_ids(tokenizer: Any, ids: list[int]) -> list[int]:
    """Response ids without the trailing end-of-turn token (the template's, not the text's)."""
    return ids[:-1] if ids and ids[-1] == tokenizer.eos_token_id else ids


def test_chat_call_in_an_attempt_stores_a_span_whose_ids_decode_to_the_returned_text(
    server: Any, tokenizer: Any
) -> None:
    rollout_id, attempt_id = claim_attempt(server.url)
    client = openai.OpenAI(base_url=attempt_url(server.url, rollout_id, attempt_id), api_key="unused")
    reply = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=12, temperature=0.7, seed=3)
    finish_attempt(server.url, rollout_id, attempt_id)  # flushes the gateway's pending spans first

    [span] = llm_spans(server.url, rollout_id)
    attrs = span["attributes"]
    choice = reply.choices[0]
    assert span["attempt_id"] == attempt_id
    assert span["name"] == f"chat {MODEL}"
    assert decode(tokenizer, text_ids(tokenizer, attrs["agentbolt.llm.response_token_ids"])) == choice.message.content
    assert attrs["agentbolt.llm.prompt_token_ids"] == chat_prompt_ids(tokenizer, CHAT)
    assert len(attrs["agentbolt.llm.response_logprobs"]) == len(attrs["agentbolt.llm.response_token_ids"])
    assert attrs["gen_ai.response.finish_reasons"] == [choice.finish_reason]
    assert attrs["gen_ai.usage.output_tokens"] == reply.usage.completion_tokens
    assert attrs["gen_ai.usage.input_tokens"] == reply.usage.prompt_tokens
    assert attrs["agentbolt.llm.model_version"] == 0
    assert attrs["agentbolt.llm.token_source"] == "engine"
    assert attrs["gen_ai.request.seed"] == 3
    assert attrs["gen_ai.response.id"] == reply.id.removeprefix("chatcmpl-")
    assert json.loads(attrs["gen_ai.input.messages"]) == CHAT
    assert json.loads(attrs["gen_ai.output.messages"])[0]["content"] == choice.message.content
    assert attrs["agentbolt.llm.latency_s"] > 0
    assert attrs["agentbolt.llm.stream"] is False


def test_streaming_call_returns_and_records_exactly_what_the_same_seed_returns_unstreamed(
    server: Any, tokenizer: Any
) -> None:
    rollout_id, attempt_id = claim_attempt(server.url)
    client = openai.OpenAI(base_url=attempt_url(server.url, rollout_id, attempt_id), api_key="unused")
    args = {"model": MODEL, "messages": CHAT, "max_tokens": 10, "seed": 11, "logprobs": True}
    plain = client.chat.completions.create(**args)
    chunks = list(client.chat.completions.create(**args, stream=True, stream_options={"include_usage": True}))
    finish_attempt(server.url, rollout_id, attempt_id)

    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == plain.choices[0].message.content
    streamed_lp = [
        lp.logprob for c in chunks if c.choices and c.choices[0].logprobs for lp in c.choices[0].logprobs.content
    ]
    assert streamed_lp == [lp.logprob for lp in plain.choices[0].logprobs.content]
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        plain.choices[0].finish_reason
    ]
    assert chunks[-1].choices == [] and chunks[-1].usage == plain.usage
    spans = llm_spans(server.url, rollout_id)
    assert [s["attributes"]["agentbolt.llm.stream"] for s in spans] == [False, True]
    ids = [s["attributes"]["agentbolt.llm.response_token_ids"] for s in spans]
    assert ids[0] == ids[1]
    assert decode(tokenizer, text_ids(tokenizer, ids[1])) == streamed


async def test_async_client_with_n_gets_n_choices_batched_and_one_span_each(server: Any, tokenizer: Any) -> None:
    rollout_id, attempt_id = claim_attempt(server.url)
    client = openai.AsyncOpenAI(base_url=attempt_url(server.url, rollout_id, attempt_id), api_key="unused")
    reply = await client.chat.completions.create(model=MODEL, messages=CHAT, n=3, max_tokens=8, seed=5)
    await client.close()
    assert [c.index for c in reply.choices] == [0, 1, 2]
    async with httpx.AsyncClient() as http:
        r = await http.post(
            f"{server.url}/api/rollouts/{rollout_id}/attempts/{attempt_id}/finish", json={"status": "succeeded"}
        )
        assert r.status_code == 200
        spans = [
            s
            for s in (await http.get(f"{server.url}/api/rollouts/{rollout_id}/spans")).json()["items"]
            if "agentbolt.llm.choice_index" in s["attributes"]
        ]
    by_index = {s["attributes"]["agentbolt.llm.choice_index"]: s["attributes"] for s in spans}
    assert sorted(by_index) == [0, 1, 2]
    assert len({a["gen_ai.response.id"] for a in by_index.values()}) == 1
    for choice in reply.choices:
        ids = by_index[choice.index]["agentbolt.llm.response_token_ids"]
        assert decode(tokenizer, text_ids(tokenizer, ids)) == choice.message.content
    # seed + i per choice: the choices differ from each other
    assert len({tuple(a["agentbolt.llm.response_token_ids"]) for a in by_index.values()}) == 3
    assert reply.usage.completion_tokens == sum(len(a["agentbolt.llm.response_token_ids"]) for a in by_index.values())


def test_logprobs_match_the_recorded_ones_and_carry_token_bytes(server: Any, tokenizer: Any) -> None:
    rollout_id, attempt_id = claim_attempt(server.url)
    client = openai.OpenAI(base_url=attempt_url(server.url, rollout_id, attempt_id), api_key="unused")
    # Greedy: a sampled reply of a random model can end inside a multi-byte character or pair a lead byte
    # with an unrelated token, and then its bytes are not valid UTF-8 on their own.
    reply = client.chat.completions.create(
        model=MODEL, messages=CHAT, max_tokens=6, logprobs=True, top_logprobs=3, temperature=0
    )
    finish_attempt(server.url, rollout_id, attempt_id)
    [span] = llm_spans(server.url, rollout_id)
    content = reply.choices[0].logprobs.content
    ids = text_ids(tokenizer, span["attributes"]["agentbolt.llm.response_token_ids"])
    assert [t.logprob for t in content] == span["attributes"]["agentbolt.llm.response_logprobs"][: len(ids)]
    assert b"".join(bytes(t.bytes) for t in content).decode() == reply.choices[0].message.content
    for t in content:
        assert len(t.top_logprobs) == 3
        assert t.top_logprobs[0].logprob >= t.logprob - 1e-6  # the best alternative is at least as likely


def test_stop_string_cuts_the_text_and_the_recorded_ids_end_where_it_completed(server: Any, tokenizer: Any) -> None:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused")
    free = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=12, temperature=0)
    text = free.choices[0].message.content
    assert len(text) > 6
    stop = text[3:6]
    cut = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=12, temperature=0, stop=[stop])
    assert cut.choices[0].message.content == text[: text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    spans = stored_spans(server, None)
    ids = spans[-1].attributes["agentbolt.llm.response_token_ids"]
    assert stop in decode(tokenizer, ids) and stop not in decode(tokenizer, ids[:-1])


def test_text_completion_from_a_string_and_from_token_ids(server: Any, tokenizer: Any) -> None:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused")
    ids = tokenizer.encode("Once upon a time", add_special_tokens=False)
    by_text = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=5, temperature=0, logprobs=2)
    by_ids = client.completions.create(model=MODEL, prompt=ids, max_tokens=5, temperature=0)
    assert by_text.choices[0].text == by_ids.choices[0].text
    assert by_text.usage.prompt_tokens == len(ids)
    assert len(by_text.choices[0].logprobs.token_logprobs) == 5
    assert "".join(by_text.choices[0].logprobs.tokens) == by_text.choices[0].text
    streamed = list(client.completions.create(model=MODEL, prompt=ids, max_tokens=5, temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in streamed if c.choices) == by_ids.choices[0].text
    spans = stored_spans(server, None)
    assert [s.attributes["gen_ai.operation.name"] for s in spans] == ["text_completion"] * 3
    assert all(s.attributes["agentbolt.llm.prompt_token_ids"] == ids for s in spans)


def test_models_endpoint_lists_the_served_model(server: Any, tiny_engine: Engine) -> None:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused")
    assert [m.id for m in client.models.list()] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL
    card = httpx.get(f"{server.url}/v1/models").json()["data"][0]
    assert card["max_model_len"] == tiny_engine.max_context


def test_openapi_documents_the_gateway_request_bodies(server: Any) -> None:
    document = httpx.get(f"{server.url}/openapi.json").json()
    assert "/v1/chat/completions" in document["paths"]
    assert "/rollouts/{rollout_id}/attempts/{attempt_id}/v1/chat/completions" in document["paths"]
    schemas = document["components"]["schemas"]
    assert "messages" in schemas["ChatCompletionRequest"]["properties"]
    assert "ChatMessage" in schemas
