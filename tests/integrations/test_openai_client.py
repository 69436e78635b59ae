"""agentbolt.integrations.openai_client: openai clients on the rollout's URL over one shared connection pool."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from agentbolt.integrations import AGENT_HEADER, openai_client
from agentbolt.types import LLM

pytest.importorskip("openai")

COMPLETION = {
    "id": "c1",
    "object": "chat.completion",
    "created": 0,
    "model": "policy",
    "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "7"}}],
}


@pytest.fixture
def server() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A loopback HTTP server answering every POST with one chat completion; records path, headers, body."""
    seen: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, so a shared pool can reuse the connection

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append(
                {
                    "path": self.path,
                    "headers": {k.lower(): v for k, v in self.headers.items()},
                    "body": body,
                    "port": self.client_address[1],
                }
            )
            data = json.dumps(COMPLETION).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", seen
    finally:
        httpd.shutdown()
        httpd.server_close()


def _llm(url: str, rollout: str) -> LLM:
    return LLM(base_url=f"{url}/rollouts/{rollout}/attempts/a1/v1", model="policy", api_key="k")


def test_sync_clients_call_their_own_rollout_url_over_one_shared_pool(server: tuple[str, list[dict[str, Any]]]) -> None:
    url, seen = server
    first = openai_client.client(_llm(url, "r1"), agent="writer", max_retries=0)
    second = openai_client.client(_llm(url, "r2"))
    for c in (first, second):
        reply = c.chat.completions.create(model="policy", messages=[{"role": "user", "content": "hi"}])
        assert reply.choices[0].message.content == "7"
    assert [s["path"] for s in seen] == [
        "/rollouts/r1/attempts/a1/v1/chat/completions",
        "/rollouts/r2/attempts/a1/v1/chat/completions",
    ]
    assert seen[0]["headers"].get(AGENT_HEADER.lower()) == "writer" and AGENT_HEADER.lower() not in seen[1]["headers"]
    assert seen[0]["headers"]["authorization"] == "Bearer k"
    assert first._client is second._client  # one HTTP client for the process...
    assert seen[0]["port"] == seen[1]["port"]  # ...whose connection the second rollout reused


def test_an_own_http_client_is_kept(server: tuple[str, list[dict[str, Any]]]) -> None:
    import openai

    url, _ = server
    own = openai.DefaultHttpxClient()
    assert openai_client.client(_llm(url, "r1"), http_client=own)._client is own
    own.close()


def test_async_clients_share_a_pool_per_event_loop(server: tuple[str, list[dict[str, Any]]]) -> None:
    url, seen = server

    async def two_calls() -> Any:
        a = openai_client.async_client(_llm(url, "r1"), agent="checker")
        b = openai_client.async_client(_llm(url, "r2"))
        for c in (a, b):
            reply = await c.chat.completions.create(model="policy", messages=[{"role": "user", "content": "hi"}])
            assert reply.choices[0].message.content == "7"
        assert a._client is b._client
        return a._client

    pool_one, pool_two = asyncio.run(two_calls()), asyncio.run(two_calls())
    assert pool_one is not pool_two  # each loop its own: an asyncio client cannot outlive its loop
    assert seen[0]["headers"].get(AGENT_HEADER.lower()) == "checker"
    assert [s["path"].split("/")[2] for s in seen] == ["r1", "r2", "r1", "r2"]
