"""The worker's batch routes over real HTTP: /api/dequeue/batch, /api/attempts/finish, /api/attempts/heartbeat."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from agentbolt.client import ServerClient
from agentbolt.errors import IllegalTransition, NotFound
from agentbolt.server.background import BackgroundServer
from agentbolt.store import Store
from agentbolt.types import Attempt, AttemptFinish, RolloutStatus


def _enqueue(url: str, n: int, **fields: object) -> list[dict[str, Any]]:
    r = httpx.post(f"{url}/api/rollouts/batch", json=[{"input": {"i": i}, **fields} for i in range(n)])
    assert r.status_code == 201, r.text
    return r.json()


def _claims(url: str, *worker_ids: str, **fields: object) -> list[dict[str, Any]]:
    r = httpx.post(f"{url}/api/dequeue/batch", json={"worker_ids": list(worker_ids), **fields})
    assert r.status_code == 200, r.text
    return r.json()


def _assert_400(r: httpx.Response, param: str | None, words: str) -> None:
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and words in error["message"], error


def test_batch_dequeue_claims_the_oldest_rollouts_one_per_runner_then_an_empty_list(server: BackgroundServer) -> None:
    queued = _enqueue(server.url, 2)
    claims = _claims(server.url, "w-0", "w-1", "w-2")
    assert [c["rollout"]["rollout_id"] for c in claims] == [r["rollout_id"] for r in queued]
    assert [c["attempt"]["worker_id"] for c in claims] == ["w-0", "w-1"]
    assert _claims(server.url, "w-2", wait_s=0.1) == []


def test_batch_finish_answers_each_attempt_and_only_the_good_ones_change(server: BackgroundServer) -> None:
    _enqueue(server.url, 2)
    first, second = _claims(server.url, "w-0", "w-1")
    ids = [(c["rollout"]["rollout_id"], c["attempt"]["attempt_id"]) for c in (first, second)]
    body = [
        {"rollout_id": ids[0][0], "attempt_id": ids[0][1], "status": "succeeded", "reward": 0.5},
        {"rollout_id": ids[1][0], "attempt_id": "at-nope", "status": "succeeded"},
        {"rollout_id": ids[0][0], "attempt_id": ids[0][1], "status": "failed"},  # it has just succeeded
    ]
    r = httpx.post(f"{server.url}/api/attempts/finish", json=body)
    assert r.status_code == 200, r.text
    done, unknown, clash = r.json()
    assert (done["status_code"], done["rollout"]["status"], done["rollout"]["reward"]) == (200, "succeeded", 0.5)
    assert done["error"] is None
    assert unknown["status_code"] == 404 and unknown["rollout"] is None
    assert unknown["error"]["code"] == "not_found" and "at-nope" in unknown["error"]["message"]
    assert clash["status_code"] == 409 and clash["error"]["code"] == "illegal_transition"
    assert httpx.get(f"{server.url}/api/rollouts/{ids[1][0]}").json()["status"] == "running"
    again = httpx.post(f"{server.url}/api/attempts/finish", json=body[:1]).json()  # a retried batch: the same answer
    assert again[0]["status_code"] == 200 and again[0]["rollout"]["status"] == "succeeded"


def test_batch_heartbeat_answers_each_attempt(server: BackgroundServer) -> None:
    _enqueue(server.url, 1)
    [claim] = _claims(server.url, "w-0")
    rid, aid = claim["rollout"]["rollout_id"], claim["attempt"]["attempt_id"]
    body = [
        {"rollout_id": rid, "attempt_id": aid, "worker_id": "w-0"},
        {"rollout_id": rid, "attempt_id": aid, "worker_id": "w-9"},
        {"rollout_id": "nope", "attempt_id": aid},
    ]
    r = httpx.post(f"{server.url}/api/attempts/heartbeat", json=body)
    assert r.status_code == 200, r.text
    assert [x["status_code"] for x in r.json()] == [200, 409, 404]
    assert "belongs to worker w-0, not w-9" in r.json()[1]["error"]["message"]


def test_batch_routes_refuse_bad_input_with_400_naming_the_field(server: BackgroundServer) -> None:
    url = server.url
    _assert_400(httpx.post(f"{url}/api/dequeue/batch", json={"worker_ids": ["a", "a"]}), "worker_ids", "more than once")
    _assert_400(httpx.post(f"{url}/api/dequeue/batch", json={"worker_ids": []}), "worker_ids", "at least 1")
    _assert_400(httpx.post(f"{url}/api/dequeue/batch", json={"worker_ids": ["a"], "wait_s": 61}), "wait_s", "60")
    _assert_400(httpx.post(f"{url}/api/attempts/finish", json=[]), None, "empty")
    bad_status = [{"rollout_id": "r", "attempt_id": "a", "status": "timeout"}]
    _assert_400(httpx.post(f"{url}/api/attempts/finish", json=bad_status), "0.status", "succeeded")
    _assert_400(httpx.post(f"{url}/api/attempts/heartbeat", json=[{"rollout_id": "r"}]), "0.attempt_id", "required")
    too_many = [{"rollout_id": "r", "attempt_id": "a"}] * 1001
    _assert_400(httpx.post(f"{url}/api/attempts/heartbeat", json=too_many), None, "1000")


def test_batch_routes_need_the_api_key(keyed_server: BackgroundServer) -> None:
    url = keyed_server.url
    for path, body in (
        ("/api/dequeue/batch", {"worker_ids": ["w"]}),
        ("/api/attempts/finish", [{"rollout_id": "r", "attempt_id": "a", "status": "succeeded"}]),
        ("/api/attempts/heartbeat", [{"rollout_id": "r", "attempt_id": "a"}]),
    ):
        assert httpx.post(f"{url}{path}", json=body).status_code == 401
        keyed = httpx.post(
            f"{url}{path}", json=body, headers={"Authorization": f"Bearer {keyed_server.config.api_key}"}
        )
        assert keyed.status_code == 200, keyed.text


async def test_an_answered_batch_finish_is_durable(server: BackgroundServer, tmp_path: Path) -> None:
    _enqueue(server.url, 3)
    async with ServerClient(server.url) as client:
        claims = await client.dequeue_many(["w-0", "w-1", "w-2"])
        outcomes = await client.finish_many(
            [(c.attempt, AttemptFinish(status="succeeded", reward=1.0)) for c in claims]
        )
    assert all(not isinstance(o, Exception) and o.status is RolloutStatus.SUCCEEDED for o in outcomes)
    other = Store(server.config.store_url)  # another connection to the file, as a restarted server would open it
    await other.open()
    try:
        for c in claims:
            assert (await other.get_rollout(c.rollout.rollout_id)).status is RolloutStatus.SUCCEEDED
    finally:
        await other.close()


async def test_client_batch_calls_give_each_attempt_its_typed_error(server: BackgroundServer) -> None:
    _enqueue(server.url, 1)
    async with ServerClient(server.url) as client:
        [claim] = await client.dequeue_many(["w-0", "w-1"])
        ghost = Attempt(
            attempt_id="at-ghost", rollout_id=claim.rollout.rollout_id, number=1, started_at=0, last_heartbeat_at=0
        )
        alive, unknown = await client.heartbeats([(claim.attempt, "w-0"), (ghost, None)])
        assert alive is None and isinstance(unknown, NotFound) and "at-ghost" in str(unknown)
        done, missing = await client.finish_many(
            [(claim.attempt, AttemptFinish(status="succeeded")), (ghost, AttemptFinish(status="succeeded"))]
        )
        assert not isinstance(done, Exception) and done.status is RolloutStatus.SUCCEEDED
        assert isinstance(missing, NotFound) and "at-ghost" in str(missing)
        [late] = await client.heartbeats([(claim.attempt, "w-0")])
        assert isinstance(late, IllegalTransition)
