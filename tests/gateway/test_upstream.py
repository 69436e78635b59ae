"""UpstreamBackend against fake vLLM-style servers on loopback: mapping, stickiness, failover, errors."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import openai
import pytest

from agentbolt import semconv
from agentbolt.errors import BadInput
from agentbolt.gateway.upstream import UpstreamBackend, UpstreamError, rank_replicas
from agentbolt.server.background import free_port
from agentbolt.types import GenerationRequest
from tests.gateway.fake_upstream import FakeUpstream
from tests.gateway.live_gateway import (
    StartServer,
    attempt_url,
    claim_attempt,
    finish_attempt,
    llm_spans,
)

REPLY = "The answer is 42."


@pytest.fixture(scope="module")
def reply_ids(tokenizer: Any) -> list[int]:
    """What a model would sample for REPLY, ending with SmolLM2's end-of-turn token."""
    return [*tokenizer.encode(REPLY, add_special_tokens=False), tokenizer.eos_token_id]


@pytest.fixture
def fakes(reply_ids: list[int]) -> Iterator[list[FakeUpstream]]:
    servers = [FakeUpstream(name=n, reply_ids=reply_ids, reply_text=REPLY + "<|im_end|>").start() for n in "abc"]
    yield servers
    for s in servers:
        s.stop()


@pytest.fixture
async def backend(fakes: list[FakeUpstream], tokenizer: Any) -> AsyncIterator[UpstreamBackend]:
    b = UpstreamBackend([f.url for f in fakes], tokenizer, "policy", upstream_model="smollm2", api_key="sk-up")
    yield b
    await b.aclose()


def prompt(tokenizer: Any, text: str = "What is six times seven?") -> list[int]:
    ids: Any = tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True
    )
    if hasattr(ids, "keys"):  # transformers 5 returns a BatchEncoding
        ids = ids["input_ids"]
    return [int(i) for i in ids]


def served_by(fakes: list[FakeUpstream], prompt_ids: list[int]) -> list[str]:
    return [f.name for f in fakes for body in f.requests if body["prompt"] == prompt_ids]


async def test_sends_token_ids_and_maps_ids_and_logprobs_back(
    backend: UpstreamBackend, fakes: list[FakeUpstream], tokenizer: Any, reply_ids: list[int]
) -> None:
    ids = prompt(tokenizer)
    # At temperature 1 vLLM's default raw logprobs are the engine convention, so they are passed on.
    request = GenerationRequest(
        prompt_token_ids=ids, max_new_tokens=20, temperature=1.0, top_p=0.9, seed=3, stop_token_ids=[7], top_logprobs=2
    )
    result = await backend.generate(request)

    body = next(b for f in fakes for b in f.requests)
    assert body["prompt"] == ids and body["model"] == "smollm2"
    assert body["max_tokens"] == 20 and body["temperature"] == 1.0 and body["top_p"] == 0.9 and body["seed"] == 3
    assert body["stop_token_ids"] == [7] and body["logprobs"] == 2
    assert body["return_token_ids"] is True and body["skip_special_tokens"] is False
    assert next(h for f in fakes for h in f.headers_seen)["authorization"] == "Bearer sk-up"

    assert result.response_token_ids == reply_ids
    assert tokenizer.decode(result.response_token_ids) == REPLY + "<|im_end|>"
    assert result.logprobs == pytest.approx([-0.25 * (i + 1) for i in range(len(reply_ids))])
    assert result.top_logprobs is not None and len(result.top_logprobs) == len(reply_ids)
    first = result.top_logprobs[0]
    assert [t.token_id for t in first] == [reply_ids[0], 1000]  # best two, by logprob
    assert result.token_source == "engine" and result.token_drift is None
    assert result.finish_reason == "stop" and result.model_version == 0


async def test_model_version_comes_from_the_trainer_or_the_upstream_header(
    backend: UpstreamBackend, fakes: list[FakeUpstream], tokenizer: Any
) -> None:
    request = GenerationRequest(prompt_token_ids=prompt(tokenizer))
    backend.set_model_version(4)
    assert backend.model_version == 4
    assert (await backend.generate(request)).model_version == 4
    for f in fakes:
        f.model_version_header = 9
    assert (await backend.generate(request)).model_version == 9


async def test_calls_of_one_rollout_stick_to_one_replica(
    backend: UpstreamBackend, fakes: list[FakeUpstream], tokenizer: Any
) -> None:
    prompts = {f"rollout-{i}": prompt(tokenizer, f"question {i}") for i in range(24)}
    for _turn in range(3):
        for rollout_id, ids in prompts.items():
            await backend.generate(GenerationRequest(prompt_token_ids=ids), affinity=rollout_id)

    used = set()
    for ids in prompts.values():
        names = served_by(fakes, ids)
        assert len(names) == 3 and len(set(names)) == 1, names
        used.add(names[0])
    assert used == {"a", "b", "c"}  # 24 rollouts spread over all replicas


async def test_calls_without_affinity_go_round_robin(
    backend: UpstreamBackend, fakes: list[FakeUpstream], tokenizer: Any
) -> None:
    for _ in range(6):
        await backend.generate(GenerationRequest(prompt_token_ids=prompt(tokenizer)))
    assert [len(f.requests) for f in fakes] == [2, 2, 2]


def test_adding_a_replica_moves_only_rollouts_that_now_prefer_it() -> None:
    urls = ["http://a/v1", "http://b/v1", "http://c/v1"]
    keys = [f"ro-{i}" for i in range(300)]
    before = {k: rank_replicas(k, urls)[0] for k in keys}
    after = {k: rank_replicas(k, [*urls, "http://d/v1"])[0] for k in keys}
    moved = [k for k in keys if before[k] != after[k]]
    assert all(after[k] == "http://d/v1" for k in moved)
    assert 0 < len(moved) < len(keys) / 2


async def test_a_refused_replica_is_skipped_and_marked_down(
    fakes: list[FakeUpstream], tokenizer: Any, reply_ids: list[int]
) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    urls = [dead, fakes[0].url, fakes[1].url]
    backend = UpstreamBackend(urls, tokenizer, "policy", down_for_s=60)
    try:
        # a rollout that prefers the dead replica
        rollout = next(f"ro-{i}" for i in range(100) if rank_replicas(f"ro-{i}", urls)[0] == dead)
        ids = prompt(tokenizer)
        first = await backend.generate(GenerationRequest(prompt_token_ids=ids), affinity=rollout)
        assert first.response_token_ids == reply_ids
        assert backend.stats()["failovers"] == 1 and backend.stats()["replicas_down"] == 1
        # while it is down, its rollouts go straight to their next choice, and stay there
        for _ in range(3):
            await backend.generate(GenerationRequest(prompt_token_ids=ids), affinity=rollout)
        assert backend.stats()["failovers"] == 1
        assert len(set(served_by(fakes, ids))) == 1
    finally:
        await backend.aclose()


async def test_no_reachable_replica_is_an_upstream_error(tokenizer: Any) -> None:
    backend = UpstreamBackend([f"http://127.0.0.1:{free_port()}/v1"], tokenizer, "policy")
    try:
        with pytest.raises(UpstreamError, match="no upstream replica could be reached"):
            await backend.generate(GenerationRequest(prompt_token_ids=prompt(tokenizer)))
    finally:
        await backend.aclose()


async def test_a_replica_that_stops_mid_run_fails_over(
    backend: UpstreamBackend, fakes: list[FakeUpstream], tokenizer: Any, reply_ids: list[int]
) -> None:
    request = GenerationRequest(prompt_token_ids=prompt(tokenizer))
    for _ in range(3):  # open a pooled connection to every replica
        await backend.generate(request)
    fakes[1].stop()
    results = [await backend.generate(request) for _ in range(6)]
    assert all(r.response_token_ids == reply_ids for r in results)
    assert backend.stats()["failovers"] >= 1


async def test_text_only_upstream_is_retokenized_and_drift_counted(
    fakes: list[FakeUpstream], tokenizer: Any, reply_ids: list[int], caplog: pytest.LogCaptureFixture
) -> None:
    fake = fakes[0]
    fake.mode = "generic"
    fake.reply_text = REPLY  # generic servers leave the end-of-turn token out of the text
    fake.usage_completion_tokens = len(reply_ids) + 2  # the upstream tokenized differently
    backend = UpstreamBackend([fake.url], tokenizer, "policy")
    try:
        with caplog.at_level(logging.WARNING, logger="agentbolt.gateway.upstream"):
            first = await backend.generate(GenerationRequest(prompt_token_ids=prompt(tokenizer)))
            second = await backend.generate(GenerationRequest(prompt_token_ids=prompt(tokenizer)))
    finally:
        await backend.aclose()
    local = [*tokenizer.encode(REPLY, add_special_tokens=False), tokenizer.eos_token_id]
    assert first.response_token_ids == local
    assert first.token_source == "retokenized" and first.token_drift == 2
    assert first.logprobs == []  # the upstream gave none: the trainer must recompute them
    assert second.token_source == "retokenized"
    assert backend.stats()["retokenized"] == 2 and backend.stats()["token_drift_total"] == 4
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "no token ids" in r.getMessage()]
    assert len(warnings) == 1


async def test_retokenized_logprobs_are_kept_only_when_tokens_match(
    fakes: list[FakeUpstream], tokenizer: Any, reply_ids: list[int]
) -> None:
    fake = fakes[0]
    fake.mode = "generic"
    fake.token_texts = [tokenizer.decode([i]) for i in reply_ids]
    backend = UpstreamBackend([fake.url], tokenizer, "policy")
    try:
        matching = await backend.generate(GenerationRequest(prompt_token_ids=prompt(tokenizer)))
        fake.token_texts = ["The answer", " is", " 42", ".", "<|im_end|>"]  # the upstream split it differently
        other = await backend.generate(GenerationRequest(prompt_token_ids=prompt(tokenizer)))
    finally:
        await backend.aclose()
    assert matching.response_token_ids == reply_ids and matching.token_drift == 0
    assert matching.logprobs == pytest.approx([-0.5 * (i + 1) for i in range(len(reply_ids))])
    assert other.response_token_ids == reply_ids and other.logprobs == []


async def test_upstream_4xx_is_bad_input_with_its_message(
    backend: UpstreamBackend, fakes: list[FakeUpstream], tokenizer: Any
) -> None:
    for f in fakes:
        f.fail_status, f.fail_message = 400, "This model's maximum context length is 2048 tokens"
    with pytest.raises(BadInput, match="maximum context length is 2048"):
        await backend.generate(GenerationRequest(prompt_token_ids=prompt(tokenizer)))


async def test_upstream_5xx_is_an_upstream_error(
    backend: UpstreamBackend, fakes: list[FakeUpstream], tokenizer: Any
) -> None:
    for f in fakes:
        f.fail_status, f.fail_message = 500, "CUDA out of memory"
    with pytest.raises(UpstreamError, match="HTTP 500: CUDA out of memory") as info:
        await backend.generate(GenerationRequest(prompt_token_ids=prompt(tokenizer)))
    assert info.value.http_status == 502


async def test_a_wrong_api_key_is_an_upstream_error_not_bad_input(
    backend: UpstreamBackend, fakes: list[FakeUpstream], tokenizer: Any
) -> None:
    for f in fakes:
        f.fail_status, f.fail_message = 401, "invalid API key"
    with pytest.raises(UpstreamError, match="API key"):
        await backend.generate(GenerationRequest(prompt_token_ids=prompt(tokenizer)))


async def test_a_slow_upstream_times_out_as_upstream_error(fakes: list[FakeUpstream], tokenizer: Any) -> None:
    fakes[0].delay_s = 2.0
    backend = UpstreamBackend([fakes[0].url], tokenizer, "policy", timeout_s=0.2)
    try:
        with pytest.raises(UpstreamError, match=r"did not answer within 0\.2s"):
            await backend.generate(GenerationRequest(prompt_token_ids=prompt(tokenizer)))
    finally:
        await backend.aclose()


async def test_check_request_refuses_long_prompts_and_unknown_ids(tokenizer: Any) -> None:
    backend = UpstreamBackend(["http://127.0.0.1:1/v1"], tokenizer, "policy", max_context=64)
    try:
        assert backend.max_context == 64 and tokenizer.eos_token_id in backend.eos_token_ids
        backend.check_request(GenerationRequest(prompt_token_ids=[1] * 32, max_new_tokens=32))
        with pytest.raises(BadInput, match="context length of 64"):
            backend.check_request(GenerationRequest(prompt_token_ids=[1] * 40, max_new_tokens=32))
        with pytest.raises(BadInput, match="outside the vocabulary"):
            backend.check_request(GenerationRequest(prompt_token_ids=[1, len(tokenizer)], max_new_tokens=1))
    finally:
        await backend.aclose()


# --- through the gateway: the real server, the real openai client --------------------------------------


def test_gateway_call_through_upstream_records_the_upstreams_token_ids(
    start_server: StartServer, fakes: list[FakeUpstream], tokenizer: Any, reply_ids: list[int]
) -> None:
    backend = UpstreamBackend([f.url for f in fakes], tokenizer, "policy", upstream_model="smollm2")
    server = start_server(backend)
    rollout_id, attempt_id = claim_attempt(server.url)
    client = openai.OpenAI(base_url=attempt_url(server.url, rollout_id, attempt_id), api_key="unused")
    messages = [{"role": "user", "content": "What is six times seven?"}]
    replies = [client.chat.completions.create(model="policy", messages=messages, max_tokens=16) for _ in range(3)]
    finish_attempt(server.url, rollout_id, attempt_id)

    assert [r.choices[0].message.content for r in replies] == [REPLY] * 3
    sent = [body for f in fakes for body in f.requests]
    assert len(sent) == 3 and sum(1 for f in fakes if f.requests) == 1  # one rollout: one replica
    spans = llm_spans(server.url, rollout_id)
    assert len(spans) == 3
    for span in spans:
        attrs = span["attributes"]
        assert attrs[semconv.LLM_PROMPT_TOKEN_IDS] == sent[0]["prompt"]
        assert attrs[semconv.LLM_RESPONSE_TOKEN_IDS] == reply_ids
        assert attrs[semconv.LLM_RESPONSE_LOGPROBS] == pytest.approx([-0.25 * (i + 1) for i in range(len(reply_ids))])
        assert attrs[semconv.LLM_TOKEN_SOURCE] == "engine"


def test_gateway_call_to_a_text_only_upstream_is_recorded_as_retokenized(
    start_server: StartServer, fakes: list[FakeUpstream], tokenizer: Any, reply_ids: list[int]
) -> None:
    fake = fakes[0]
    fake.mode, fake.reply_text, fake.usage_completion_tokens = "generic", REPLY, len(reply_ids) + 1
    server = start_server(UpstreamBackend([fake.url], tokenizer, "policy"))
    rollout_id, attempt_id = claim_attempt(server.url)
    client = openai.OpenAI(base_url=attempt_url(server.url, rollout_id, attempt_id), api_key="unused")
    reply = client.chat.completions.create(model="policy", messages=[{"role": "user", "content": "Hi"}])
    finish_attempt(server.url, rollout_id, attempt_id)

    assert reply.choices[0].message.content == REPLY
    [span] = llm_spans(server.url, rollout_id)
    attrs = span["attributes"]
    assert attrs[semconv.LLM_RESPONSE_TOKEN_IDS] == reply_ids
    assert attrs[semconv.LLM_TOKEN_SOURCE] == "retokenized" and attrs[semconv.LLM_TOKEN_DRIFT] == 1


def test_gateway_answers_upstream_failures_in_openai_format(
    start_server: StartServer, fakes: list[FakeUpstream], tokenizer: Any
) -> None:
    server = start_server(UpstreamBackend([fakes[0].url], tokenizer, "policy"))
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    messages = [{"role": "user", "content": "Hi"}]
    fakes[0].fail_status, fakes[0].fail_message = 400, "stop_token_ids holds an id out of range"
    with pytest.raises(openai.BadRequestError, match="out of range"):
        client.chat.completions.create(model="policy", messages=messages)
    fakes[0].fail_status, fakes[0].fail_message = 503, "engine is restarting"
    with pytest.raises(openai.APIStatusError, match="engine is restarting") as info:
        client.chat.completions.create(model="policy", messages=messages)
    assert info.value.status_code == 502
