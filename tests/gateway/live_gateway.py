"""Fixtures of the gateway tests: a tiny random engine, a scripted backend, servers.

tests/gateway/conftest.py makes the fixtures available to the gateway tests (and tests/examples'
conftest to those); the ``tokenizer`` fixture is in tests/conftest.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agentbolt.server.background import BackgroundServer
from agentbolt.types import GenerationRequest, GenerationResult, GenerationTimings, ServerConfig

MODEL = "policy"


@pytest.fixture(scope="module")
def tiny_engine(tokenizer: Any) -> Iterator[Any]:
    """The real engine on a tiny random model (plumbing only: it has the real tokenizer, no skill)."""
    from agentbolt.engine import Engine, tiny_random_model

    with Engine(tiny_random_model(tokenizer), tokenizer, device="cpu") as engine:
        yield engine


class ScriptedBackend:
    """A backend that answers with scripted token ids: for tool calls and exact-text cases a random model
    cannot produce. Each reply is a list of ids (or text, encoded and ended with the end-of-turn token);
    replies are used in order and the last one repeats. Records every request it gets."""

    system = "scripted"

    def __init__(self, tokenizer: Any, replies: list[str | list[int]], max_context: int = 2048) -> None:
        self.model_name = MODEL
        self.tokenizer = tokenizer
        self.max_context = max_context
        self.eos_token_ids = frozenset({tokenizer.eos_token_id})
        self.replies = replies
        self.requests: list[GenerationRequest] = []

    @property
    def model_version(self) -> int:
        return 7

    def ids(self, reply: str | list[int]) -> list[int]:
        if isinstance(reply, str):
            return [*self.tokenizer.encode(reply, add_special_tokens=False), self.tokenizer.eos_token_id]
        return list(reply)

    def check_request(self, request: GenerationRequest) -> None:
        pass

    async def generate(self, request: GenerationRequest, *, affinity: str | None = None) -> GenerationResult:
        await asyncio.sleep(0)
        self.requests.append(request)
        ids = self.ids(self.replies[min(len(self.requests) - 1, len(self.replies) - 1)])
        ids = ids[: request.max_new_tokens]
        done = ids[-1] in self.eos_token_ids or ids[-1] in request.stop_token_ids
        return GenerationResult(
            response_token_ids=ids,
            logprobs=[-0.5] * len(ids),
            finish_reason="stop" if done else "length",
            model_version=self.model_version,
            timings=GenerationTimings(queued_s=0, generation_s=0, batch_size=1),
        )

    async def aclose(self) -> None:
        pass


StartServer = Callable[..., BackgroundServer]


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[StartServer]:
    """``start_server(backend, fixed=(), **config)``: a real server with the gateway on a fresh SQLite file."""
    started: list[BackgroundServer] = []

    def start(backend: Any, fixed: tuple[Any, ...] = (), **overrides: Any) -> BackgroundServer:
        config = ServerConfig(
            port=0,
            store_url=f"sqlite+aiosqlite:///{tmp_path / f'gateway{len(started)}.db'}",
            watchdog_interval_s=0.2,
            **overrides,
        )
        server = BackgroundServer(config, backend=backend, fixed=fixed).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def claim_attempt(url: str) -> tuple[str, str]:
    """Enqueue one rollout and dequeue it: (rollout id, attempt id) of a running attempt."""
    r = httpx.post(f"{url}/api/rollouts", json={"input": {"q": "x"}})
    assert r.status_code == 201, r.text
    claim = httpx.post(f"{url}/api/dequeue", json={"worker_id": "w"}).json()
    return claim["rollout"]["rollout_id"], claim["attempt"]["attempt_id"]


def finish_attempt(url: str, rollout_id: str, attempt_id: str) -> None:
    r = httpx.post(f"{url}/api/rollouts/{rollout_id}/attempts/{attempt_id}/finish", json={"status": "succeeded"})
    assert r.status_code == 200, r.text


def llm_spans(url: str, rollout_id: str | None) -> list[dict[str, Any]]:
    """The stored LLM-call spans of a rollout (after its attempt finished, or after a flush)."""
    r = httpx.get(f"{url}/api/rollouts/{rollout_id}/spans")
    assert r.status_code == 200, r.text
    return [s for s in r.json()["items"] if s["attributes"].get("gen_ai.operation.name") in ("chat", "text_completion")]


def attempt_url(url: str, rollout_id: str, attempt_id: str) -> str:
    return f"{url}/rollouts/{rollout_id}/attempts/{attempt_id}/v1"


def wait_recorded(url: str) -> dict[str, Any]:
    """Wait until the gateway has written every span it was handed; returns its stats."""
    for _ in range(500):
        stats = httpx.get(f"{url}/api/gateway/stats").json()
        if stats["spans_pending"] == 0:
            return stats
        import time

        time.sleep(0.01)
    raise AssertionError("gateway spans still pending after 5 s")


def stored_spans(server: BackgroundServer, rollout_id: str | None) -> list[Any]:
    """Every stored span of ``rollout_id`` (None: the unattributed ones), once the gateway has written its own."""
    wait_recorded(server.url)
    return spans_in_store(server, rollout_id)


def spans_in_store(server: BackgroundServer, rollout_id: str | None) -> list[Any]:
    """The spans of ``rollout_id`` the store holds right now, read from it directly (no flush, no waiting)."""
    from agentbolt.store import Store

    async def read() -> list[Any]:
        store = Store(server.config.store_url)
        await store.open()
        try:
            return list((await store.query_spans(rollout_id, limit=10_000)).items)
        finally:
            await store.close()

    return asyncio.run(read())
