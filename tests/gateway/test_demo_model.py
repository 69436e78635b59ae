"""The gateway serving the real demo model (SmolLM2-135M-Instruct) to the openai client and LangChain."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from agentbolt.server.background import BackgroundServer
from agentbolt.types import ServerConfig
from tests.gateway.live_gateway import MODEL, attempt_url, claim_attempt, finish_attempt, llm_spans

pytest.importorskip("torch", reason="the engine needs the train extra")


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[BackgroundServer, Any]]:
    from agentbolt.engine import Engine
    from agentbolt.gateway.backend import EngineBackend

    engine = Engine.load("demo", device="cpu")
    store = tmp_path_factory.mktemp("demo") / "demo.db"
    config = ServerConfig(port=0, store_url=f"sqlite+aiosqlite:///{Path(store)}")
    with BackgroundServer(config, backend=EngineBackend(engine, MODEL)) as server:
        yield server, engine.tokenizer
    engine.close()


def _decoded(tokenizer: Any, ids: list[int]) -> str:
    if ids and ids[-1] == tokenizer.eos_token_id:
        ids = ids[:-1]
    return str(tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False))


def test_openai_and_langchain_replies_are_exactly_the_recorded_tokens(
    demo_server: tuple[BackgroundServer, Any],
) -> None:
    from langchain_openai import ChatOpenAI

    server, tokenizer = demo_server
    rollout_id, attempt_id = claim_attempt(server.url)
    base_url = attempt_url(server.url, rollout_id, attempt_id)
    question = [{"role": "user", "content": "What is the capital of France?"}]
    by_openai = openai.OpenAI(base_url=base_url, api_key="unused").chat.completions.create(
        model=MODEL,
        messages=question,
        max_tokens=16,
        temperature=0,  # type: ignore[arg-type]
    )
    llm = ChatOpenAI(model=MODEL, base_url=base_url, api_key="unused", max_tokens=16, temperature=0)  # type: ignore[arg-type]
    by_langchain = llm.invoke("What is the capital of France?")
    streamed = "".join(str(chunk.content) for chunk in llm.stream("Name one colour."))
    finish_attempt(server.url, rollout_id, attempt_id)

    texts = [by_openai.choices[0].message.content, by_langchain.content, streamed]
    spans = llm_spans(server.url, rollout_id)
    assert len(spans) == 3
    for span, text in zip(spans, texts, strict=True):
        assert _decoded(tokenizer, span["attributes"]["agentbolt.llm.response_token_ids"]) == text
    assert "Paris" in texts[0]  # the real model, greedy: it knows this one
    assert texts[0] == texts[1]  # same prompt, greedy: LangChain got the very same reply
