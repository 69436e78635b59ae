"""Faults from one bad request, against a real server on loopback with the tiny random model.

A bad request sent with ordinary ones fails alone (a JSON 4xx naming the field) and the others complete;
a huge prompt is refused before it is tokenized while the server goes on answering; JSON nested too deeply
is a JSON 400 on both generation routes.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from agentbolt.gateway.backend import EngineBackend
from tests.gateway.live_gateway import MODEL, StartServer, start_server, tiny_engine  # noqa: F401  (fixtures)

pytest.importorskip("torch", reason="the engine needs the train extra: bash scripts/setup.sh dev,train")


@pytest.fixture
def url(start_server: StartServer, tiny_engine: Any) -> str:  # noqa: F811  (the fixtures imported above)
    return start_server(EngineBackend(tiny_engine, MODEL)).url


def _chat(content: str, **params: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 4, **params}


def _assert_json_error(r: httpx.Response, status: int, param: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    error: dict[str, Any] = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if param is not None:
        assert error["param"] == param
    return error


@pytest.mark.parametrize(("param", "value"), [("seed", 2**64), ("temperature", 1e-50)])
async def test_one_bad_request_fails_alone_and_the_eight_sent_with_it_succeed(
    url: str, param: str, value: float
) -> None:
    good = [_chat(f"question {i}", seed=i) for i in range(8)]
    bodies = [*good[:4], _chat("the bad one", **{param: value}), *good[4:]]
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        replies = await asyncio.gather(*(client.post("/v1/chat/completions", json=b) for b in bodies))
    _assert_json_error(replies[4], 400, param)
    for r in replies[:4] + replies[5:]:
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["finish_reason"] in ("stop", "length")


async def test_huge_prompt_is_refused_before_tokenizing_while_health_answers(url: str) -> None:
    huge = "x" * 4_000_000
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        chat, text, health = await asyncio.gather(
            client.post("/v1/chat/completions", json=_chat(huge)),
            client.post("/v1/completions", json={"model": MODEL, "prompt": huge}),
            client.get("/health"),
        )
        ordinary = await client.post("/v1/chat/completions", json=_chat("still there?"))
    for r, param in ((chat, "messages"), (text, "prompt")):
        error = _assert_json_error(r, 400, param)
        assert error["code"] == "context_length_exceeded"
        assert "characters" in error["message"]  # refused on its length in characters: it was never tokenized
    assert health.status_code == 200, health.text
    assert ordinary.status_code == 200, ordinary.text


@pytest.mark.parametrize("route", ["/v1/chat/completions", "/v1/completions"])
def test_json_nested_too_deeply_is_a_json_400(url: str, route: str) -> None:
    depth = 100_000
    for raw in (b"[" * depth + b"]" * depth, b'{"model": ' + b'{"a": ' * depth + b"1" + b"}" * (depth + 1)):
        r = httpx.post(url + route, content=raw, headers={"content-type": "application/json"}, timeout=30)
        assert _assert_json_error(r, 400)["code"] == "invalid_json"


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"1e400"])
def test_non_finite_number_is_a_json_400(url: str, literal: bytes) -> None:
    raw = b'{"model": "policy", "messages": [{"role": "user", "content": "hi"}], "temperature": ' + literal + b"}"
    r = httpx.post(url + "/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
    assert _assert_json_error(r, 400)["code"] == "invalid_json"


def test_empty_stop_string_is_accepted_and_ignored(url: str) -> None:
    r = httpx.post(url + "/v1/chat/completions", json=_chat("hi", stop=[""]), timeout=60)
    assert r.status_code == 200, r.text
