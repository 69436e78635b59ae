"""Two ``agentbolt serve`` processes on one PostgreSQL database: a rollout whose LLM calls one server
answered and whose attempt the other finished reads back whole from the second, at once.

What runs: a fake vLLM-style upstream (tests/gateway/fake_upstream.py) on a thread, server A and server B
as real subprocesses on their own ports (``--upstream`` with the demo tokenizer), and this process as
worker: per rollout it claims an attempt from B, makes a plain and a streamed chat call through A's
gateway, finishes the attempt through B and reads the rollout back from B (``POST /api/rollouts/read``).

The flush interval is long (``FLUSH_INTERVAL_S``), so the window of the old behaviour is wide: with
``--span-durability finish`` A answers before it stores the spans, B's finish cannot flush them, and
rollouts read back without their LLM spans (the negative case, which shows the spans arrive late, not
never). It asserts only that *some* rollout is incomplete: the first is read a few ms after A answered
its calls, long before A's first write (up to ``FLUSH_INTERVAL_S`` later), so every rollout comes back
whole only if the machine stalls for seconds. With the default (``auto``: answer durability on
PostgreSQL) every rollout has all of them.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import openai
import pytest

from agentbolt.server.background import free_port
from tests.faults.common import wait_until
from tests.gateway.fake_upstream import FakeUpstream

pytestmark = pytest.mark.postgres

ROLLOUTS = 24
CONCURRENT = 4  # rollouts in flight at once, so server A's commits serve several calls
CALLS_PER_ROLLOUT = 2  # one plain, one streamed
FLUSH_INTERVAL_S = 5.0  # finish durability: A writes a call's spans up to this long after answering it
CHAT = [{"role": "user", "content": "Say hello."}]
REPLY = "Hello!"


def _serve(store_url: str, upstream: str, durability: str) -> tuple[str, subprocess.Popen[bytes]]:
    """Start ``agentbolt serve`` on a free port in front of ``upstream``: its URL and process."""
    port = free_port()
    command = [sys.executable, "-m", "agentbolt.cli", "serve", "--port", str(port), "--store", store_url]
    command += ["--upstream", upstream, "--tokenizer", "demo", "--span-flush-interval", str(FLUSH_INTERVAL_S)]
    command += ["--span-durability", durability]
    return f"http://127.0.0.1:{port}", subprocess.Popen(command, stdout=subprocess.DEVNULL)


def _wait_healthy(url: str, proc: subprocess.Popen[bytes]) -> None:
    def healthy() -> bool:
        try:
            return httpx.get(f"{url}/health", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    wait_until(f"{url} answers /health", healthy, proc)


@pytest.fixture
def upstream(tokenizer: Any) -> Iterator[str]:
    """The fake engine: it "samples" REPLY, in the demo tokenizer's ids."""
    reply_ids = [*tokenizer.encode(REPLY, add_special_tokens=False), tokenizer.eos_token_id]
    with FakeUpstream(reply_ids=reply_ids, reply_text=REPLY + "<|im_end|>") as fake:
        yield fake.url


def _llm_spans(rollout: dict[str, Any]) -> int:
    return sum(1 for s in rollout["spans"] if s["attributes"].get("gen_ai.operation.name") == "chat")


def _read(url: str, rollout_ids: list[str]) -> list[dict[str, Any]]:
    r = httpx.post(f"{url}/api/rollouts/read", json={"rollout_ids": rollout_ids}, timeout=30)
    r.raise_for_status()
    rollouts: list[dict[str, Any]] = r.json()
    return rollouts


def _one_rollout(a: str, b: str) -> tuple[str, int]:
    """Claim from B, call through A, finish through B, read from B: (rollout id, LLM spans B read)."""
    r = httpx.post(f"{b}/api/rollouts", json={"input": "hello"}, timeout=30)
    r.raise_for_status()
    claim = httpx.post(f"{b}/api/dequeue", json={"worker_id": "multi-process-test"}, timeout=30).json()
    rollout_id, attempt_id = claim["rollout"]["rollout_id"], claim["attempt"]["attempt_id"]
    base_url = f"{a}/rollouts/{rollout_id}/attempts/{attempt_id}/v1"
    with openai.OpenAI(base_url=base_url, api_key="unused", timeout=30) as client:
        reply = client.chat.completions.create(model="policy", messages=CHAT, max_tokens=8)
        assert reply.choices[0].message.content == REPLY
        streamed = list(client.chat.completions.create(model="policy", messages=CHAT, max_tokens=8, stream=True))
        assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == REPLY
    finish = f"{b}/api/rollouts/{rollout_id}/attempts/{attempt_id}/finish"
    httpx.post(finish, json={"status": "succeeded"}, timeout=30).raise_for_status()
    [rollout] = _read(b, [rollout_id])  # right away, as the trainer would
    assert rollout["status"] == "succeeded"
    return rollout_id, _llm_spans(rollout)


@pytest.mark.parametrize(
    ("durability", "answered_as"),
    [pytest.param("auto", "answer", id="auto-on-postgres"), pytest.param("finish", "finish", id="finish-negative")],
)
def test_a_rollout_answered_by_one_server_and_finished_by_another_reads_back_whole(
    postgres_url: str, upstream: str, durability: str, answered_as: str
) -> None:
    procs: list[subprocess.Popen[bytes]] = []
    try:
        a, proc_a = _serve(postgres_url, upstream, durability)
        procs.append(proc_a)
        b, proc_b = _serve(postgres_url, upstream, durability)  # both create the schema: an advisory lock orders them
        procs.append(proc_b)
        _wait_healthy(a, proc_a)
        _wait_healthy(b, proc_b)
        assert httpx.get(f"{a}/api/gateway/stats").json()["span_durability"] == answered_as

        with ThreadPoolExecutor(CONCURRENT) as pool:
            read = list(pool.map(lambda _: _one_rollout(a, b), range(ROLLOUTS)))

        missing = {rollout_id: CALLS_PER_ROLLOUT - spans for rollout_id, spans in read if spans < CALLS_PER_ROLLOUT}
        if answered_as == "answer":
            assert missing == {}, f"{len(missing)} of {ROLLOUTS} rollouts were read without all their LLM spans"
        else:
            # The old behaviour: B finished attempts whose spans A had answered but not yet written ...
            assert missing, f"every rollout was whole, though A holds spans up to {FLUSH_INTERVAL_S} s"
            proc_a.terminate()  # ... and they arrive later (A's shutdown writes them): late, not lost
            proc_a.wait(timeout=60)
            rollouts = _read(b, [rollout_id for rollout_id, _ in read])
            assert [_llm_spans(r) for r in rollouts] == [CALLS_PER_ROLLOUT] * ROLLOUTS
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=60)
