"""The queue API over real HTTP against a real server and SQLite file."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from agentbolt.client import ServerClient
from agentbolt.errors import IllegalTransition, NotFound
from agentbolt.server.background import BackgroundServer
from agentbolt.types import AttemptFinish, ErrorInfo, RolloutConfig, RolloutCreate, RolloutStatus


def _enqueue(url: str, n: int = 1, **fields: object) -> list[dict]:
    body = [{"input": {"i": i}, **fields} for i in range(n)]
    r = httpx.post(f"{url}/api/rollouts/batch", json=body)
    assert r.status_code == 201, r.text
    return r.json()


def test_health_reports_store_and_schema(server: BackgroundServer) -> None:
    r = httpx.get(f"{server.url}/health")
    assert r.status_code == 200
    assert r.json()["status"] == "ok"
    assert r.json()["store"] == "sqlite"


def test_openapi_schema_lists_the_queue_and_trace_routes(server: BackgroundServer) -> None:
    paths = httpx.get(f"{server.url}/openapi.json").json()["paths"]
    for path in (
        "/api/rollouts",
        "/api/dequeue",
        "/v1/traces",
        "/api/rollouts/{rollout_id}/attempts/{attempt_id}/finish",
    ):
        assert path in paths


def test_rollout_lifecycle_enqueue_dequeue_heartbeat_finish(server: BackgroundServer) -> None:
    url = server.url
    r = httpx.post(f"{url}/api/rollouts", json={"input": {"q": "2+2"}, "mode": "val", "group_id": "g1"})
    assert r.status_code == 201
    rollout = r.json()
    assert rollout["status"] == "queuing"

    claim = httpx.post(f"{url}/api/dequeue", json={"worker_id": "w1"}).json()
    assert claim["rollout"]["rollout_id"] == rollout["rollout_id"]
    assert claim["rollout"]["status"] == "running"
    attempt = claim["attempt"]
    base = f"{url}/api/rollouts/{rollout['rollout_id']}/attempts/{attempt['attempt_id']}"
    assert httpx.post(f"{base}/heartbeat", json={"worker_id": "w1"}).status_code == 204

    done = httpx.post(f"{base}/finish", json={"status": "succeeded", "reward": 0.5}).json()
    assert done["status"] == "succeeded"
    assert done["reward"] == 0.5
    shown = httpx.get(f"{url}/api/rollouts/{rollout['rollout_id']}").json()
    assert shown["attempts"][0]["status"] == "succeeded"
    assert shown["attempts"][0]["worker_id"] == "w1"


def test_failed_attempt_keeps_error_details(server: BackgroundServer) -> None:
    [rollout] = _enqueue(server.url)
    claim = httpx.post(f"{server.url}/api/dequeue", json={"worker_id": "w"}).json()
    base = f"{server.url}/api/rollouts/{rollout['rollout_id']}/attempts/{claim['attempt']['attempt_id']}"
    error = {"type": "ValueError", "message": "bad tool output", "traceback": "Traceback ..."}
    done = httpx.post(f"{base}/finish", json={"status": "failed", "error": error}).json()
    assert done["status"] == "failed"
    shown = httpx.get(f"{server.url}/api/rollouts/{rollout['rollout_id']}").json()
    assert shown["attempts"][0]["error"] == error


def test_dequeue_long_poll_returns_as_soon_as_a_rollout_is_enqueued(server: BackgroundServer) -> None:
    async def scenario() -> None:
        async with ServerClient(server.url) as client:
            waiter = asyncio.create_task(client.dequeue("w", wait_s=10))
            await asyncio.sleep(0.3)
            assert not waiter.done()
            [rollout] = await client.enqueue([RolloutCreate(input=1)])
            claim = await waiter
            # The long-poll ended with the rollout enqueued while it waited; a wait that ran out answers 204 (None).
            assert claim is not None
            assert claim.rollout.rollout_id == rollout.rollout_id

    asyncio.run(scenario())


def test_dequeue_without_work_answers_204_after_the_wait(server: BackgroundServer) -> None:
    r = httpx.post(f"{server.url}/api/dequeue", json={"worker_id": "w", "wait_s": 0.2})
    assert r.status_code == 204


def test_concurrent_http_dequeue_never_double_assigns(server: BackgroundServer) -> None:
    n = 120
    _enqueue(server.url, n)

    async def drain(client: ServerClient, worker: str) -> list[str]:
        got = []
        while (claim := await client.dequeue(worker)) is not None:
            got.append(claim.rollout.rollout_id)
        return got

    async def scenario() -> list[list[str]]:
        async with ServerClient(server.url) as client:
            return await asyncio.gather(*(drain(client, f"w{i}") for i in range(16)))

    results = asyncio.run(scenario())
    claimed = [rid for worker in results for rid in worker]
    assert len(claimed) == n
    assert len(set(claimed)) == n


def test_query_filters_and_pagination(server: BackgroundServer) -> None:
    _enqueue(server.url, 5, mode="train", group_id="ga")
    _enqueue(server.url, 3, mode="test", group_id="gb")
    page = httpx.get(f"{server.url}/api/rollouts", params={"mode": "test"}).json()
    assert page["total"] == 3 and {r["group_id"] for r in page["items"]} == {"gb"}
    page = httpx.get(f"{server.url}/api/rollouts", params={"limit": 3, "offset": 3}).json()
    assert page["total"] == 8 and len(page["items"]) == 3
    page = httpx.get(f"{server.url}/api/rollouts", params={"status": ["queuing", "running"]}).json()
    assert page["total"] == 8


def test_wait_returns_finished_and_pending(server: BackgroundServer) -> None:
    async def scenario() -> None:
        async with ServerClient(server.url) as client:
            a, b = await client.enqueue([RolloutCreate(input=1), RolloutCreate(input=2)])
            claim = await client.dequeue("w")
            assert claim is not None
            await client.finish(claim.attempt, AttemptFinish(status="succeeded"))
            result = await client.wait([a.rollout_id, b.rollout_id], timeout_s=0.3)
            assert [r.rollout_id for r in result.finished] == [a.rollout_id]
            assert result.pending == [b.rollout_id]

    asyncio.run(scenario())


def test_retry_after_failure_when_config_allows(server: BackgroundServer) -> None:
    async def scenario() -> None:
        async with ServerClient(server.url) as client:
            config = RolloutConfig(max_attempts=2, retry_on=["failed"])
            [rollout] = await client.enqueue([RolloutCreate(input=1, config=config)])
            first = await client.dequeue("w")
            assert first is not None
            after = await client.finish(first.attempt, AttemptFinish(status="failed", error=ErrorInfo(type="E")))
            assert after.status is RolloutStatus.QUEUING
            second = await client.dequeue("w")
            assert second is not None and second.attempt.number == 2
            assert second.rollout.rollout_id == rollout.rollout_id
            final = await client.finish(second.attempt, AttemptFinish(status="failed"))
            assert final.status is RolloutStatus.FAILED

    asyncio.run(scenario())


def test_rewards_api_stores_a_reward_span(server: BackgroundServer) -> None:
    [rollout] = _enqueue(server.url)
    httpx.post(f"{server.url}/api/dequeue", json={"worker_id": "w"})
    r = httpx.post(
        f"{server.url}/api/rollouts/{rollout['rollout_id']}/rewards",
        json={"dimensions": {"correct": 1.0, "format": 0.5}, "primary": "correct"},
    )
    assert r.status_code == 201, r.text
    spans = httpx.get(f"{server.url}/api/rollouts/{rollout['rollout_id']}/spans").json()["items"]
    assert [s["name"] for s in spans] == ["agentbolt.reward"]
    assert spans[0]["attributes"]["agentbolt.reward.value"] == 1.0
    assert httpx.get(f"{server.url}/api/rollouts/{rollout['rollout_id']}").json()["reward"] == 1.0
    r = httpx.post(f"{server.url}/api/rollouts/{rollout['rollout_id']}/rewards", json={"value": 0.2, "final": False})
    assert r.status_code == 201
    assert httpx.get(f"{server.url}/api/rollouts/{rollout['rollout_id']}").json()["reward"] == 1.0


def test_reward_for_an_unknown_attempt_is_404(server: BackgroundServer) -> None:
    [rollout] = _enqueue(server.url)
    r = httpx.post(
        f"{server.url}/api/rollouts/{rollout['rollout_id']}/rewards", json={"value": 1, "attempt_id": "at-x"}
    )
    _assert_error(r, 404, "at-x")
    r = httpx.post(f"{server.url}/api/rollouts/{rollout['rollout_id']}/rewards", json={"value": 1})
    _assert_error(r, 400, "no attempt")


def test_read_returns_whole_rollouts_with_attempts_and_spans_in_the_order_asked(server: BackgroundServer) -> None:
    first, second, untouched = _enqueue(server.url, 3)
    for _ in range(2):
        claim = httpx.post(f"{server.url}/api/dequeue", json={"worker_id": "w"}).json()
        rid, aid = claim["rollout"]["rollout_id"], claim["attempt"]["attempt_id"]
        httpx.post(f"{server.url}/api/rollouts/{rid}/rewards", json={"value": 0.5}).raise_for_status()
        httpx.post(f"{server.url}/api/rollouts/{rid}/attempts/{aid}/finish", json={"status": "succeeded"})
    ids = [second["rollout_id"], untouched["rollout_id"], first["rollout_id"]]
    r = httpx.post(f"{server.url}/api/rollouts/read", json={"rollout_ids": ids})
    assert r.status_code == 200, r.text
    read = r.json()
    assert [x["rollout_id"] for x in read] == ids
    assert [x["status"] for x in read] == ["succeeded", "queuing", "succeeded"]
    assert [len(x["attempts"]) for x in read] == [1, 0, 1]
    assert [[s["name"] for s in x["spans"]] for x in read] == [["agentbolt.reward"], [], ["agentbolt.reward"]]


def test_read_of_unknown_rollouts_is_404_naming_them_and_an_empty_read_is_400(server: BackgroundServer) -> None:
    [known] = _enqueue(server.url)
    r = httpx.post(f"{server.url}/api/rollouts/read", json={"rollout_ids": [known["rollout_id"], "ro-gone"]})
    _assert_error(r, 404, "ro-gone")
    _assert_error(httpx.post(f"{server.url}/api/rollouts/read", json={"rollout_ids": []}), 400, "rollout_ids")


async def test_client_reads_many_rollouts_in_chunks(server: BackgroundServer, monkeypatch: pytest.MonkeyPatch) -> None:
    from agentbolt.client import http

    monkeypatch.setattr(http, "READ_CHUNK", 2)
    ids = [r["rollout_id"] for r in _enqueue(server.url, 5)]
    async with ServerClient(server.url) as client:
        read = await client.read_rollouts(list(reversed(ids)))
    assert [r.rollout_id for r in read] == list(reversed(ids))
    assert all(r.status is RolloutStatus.QUEUING and r.spans == [] for r in read)


def test_model_versions_record_and_latest(server: BackgroundServer) -> None:
    assert httpx.get(f"{server.url}/api/model-versions/latest").status_code == 404
    for v in (0, 1):
        r = httpx.post(f"{server.url}/api/model-versions", json={"version": v, "model": "smol"})
        assert r.status_code == 201
    assert httpx.get(f"{server.url}/api/model-versions/latest").json()["version"] == 1


# -- bad input: each gets a 4xx JSON error naming the problem, and stores nothing ----------------


def _assert_error(r: httpx.Response, status: int, *words: str) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    message = r.json()["error"]["message"]
    for word in words:
        assert word in message, message


def test_malformed_json_is_400_and_stores_nothing(server: BackgroundServer) -> None:
    r = httpx.post(
        f"{server.url}/api/rollouts/batch", content=b'[{"input": 1,', headers={"content-type": "application/json"}
    )
    _assert_error(r, 400, "not valid JSON")
    assert httpx.get(f"{server.url}/api/rollouts").json()["total"] == 0


def test_invalid_fields_are_400_naming_the_field(server: BackgroundServer) -> None:
    r = httpx.post(f"{server.url}/api/rollouts", json={"input": 1, "mode": "bogus"})
    _assert_error(r, 400, "mode")
    r = httpx.post(f"{server.url}/api/rollouts", json={"input": 1, "config": {"max_attempts": 0}})
    _assert_error(r, 400, "max_attempts")
    r = httpx.post(f"{server.url}/api/rollouts", json={"mode": "train"})
    _assert_error(r, 400, "input")
    r = httpx.post(f"{server.url}/api/rollouts/batch", json=[{"input": 1}, {"input": 2, "unknown": True}])
    _assert_error(r, 400, "unknown")
    assert httpx.get(f"{server.url}/api/rollouts").json()["total"] == 0


def test_error_type_is_openais_category_and_code_the_reason_and_param_the_field(server: BackgroundServer) -> None:
    r = httpx.post(f"{server.url}/api/rollouts", json={"input": 1, "config": {"max_attempts": 0}})
    assert r.status_code == 400
    error = r.json()["error"]
    assert (error["type"], error["code"], error["param"]) == (
        "invalid_request_error",
        "invalid_value",
        "config.max_attempts",
    )
    error = httpx.get(f"{server.url}/api/rollouts/ro-nope").json()["error"]
    assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", "not_found", None)


def _param(r: httpx.Response) -> str | None:
    assert r.status_code == 400, r.text
    param: str | None = r.json()["error"]["param"]
    return param


def test_integers_the_store_cannot_hold_are_400_naming_the_field(server: BackgroundServer) -> None:
    url = server.url
    assert _param(httpx.post(f"{url}/api/rollouts", json={"input": 1, "model_version": 2**63})) == "model_version"
    assert _param(httpx.post(f"{url}/api/rollouts", json={"input": 1, "model_version": 2**31})) == "model_version"
    batch = [{"input": 1}, {"input": 2, "model_version": 2**64}]
    assert _param(httpx.post(f"{url}/api/rollouts/batch", json=batch)) == "1.model_version"
    assert _param(httpx.get(f"{url}/api/rollouts", params={"offset": 2**63})) == "query.offset"
    assert _param(httpx.post(f"{url}/api/model-versions", json={"version": 2**63, "model": "m"})) == "version"
    [rollout] = _enqueue(url)
    spans = f"{url}/api/rollouts/{rollout['rollout_id']}/spans"
    assert _param(httpx.get(spans, params={"offset": 2**63})) == "query.offset"
    assert httpx.get(spans, params={"offset": 2**63 - 1}).status_code == 200  # the largest the store holds
    assert httpx.get(f"{url}/api/rollouts").json()["total"] == 1


def test_booleans_are_not_integers(server: BackgroundServer) -> None:
    url = server.url
    assert _param(httpx.post(f"{url}/api/rollouts", json={"input": 1, "model_version": True})) == "model_version"
    r = httpx.post(f"{url}/api/rollouts", json={"input": 1, "config": {"max_attempts": True}})
    assert _param(r) == "config.max_attempts"
    assert _param(httpx.post(f"{url}/api/model-versions", json={"version": False, "model": "m"})) == "version"


@pytest.mark.parametrize("number", [b"NaN", b"Infinity", b"-Infinity", b"1e999"])
def test_non_finite_numbers_are_400_naming_the_field(server: BackgroundServer, number: bytes) -> None:
    url, headers = server.url, {"content-type": "application/json"}

    def post(path: str, body: bytes) -> httpx.Response:
        return httpx.post(f"{url}{path}", content=body.replace(b"X", number), headers=headers)

    r = post("/api/rollouts", b'{"input": {"question": "2+2", "hints": [1, X]}}')
    assert _param(r) == "input" and "hints.1" in r.json()["error"]["message"]
    assert _param(post("/api/rollouts", b'{"input": X}')) == "input"
    assert _param(post("/api/rollouts", b'{"input": 1, "metadata": {"m": X}}')) == "metadata.m"
    assert _param(post("/api/rollouts", b'{"input": 1, "config": {"timeout_s": X}}')) == "config.timeout_s"
    assert _param(post("/api/model-versions", b'{"version": 1, "model": "m", "metadata": {"m": X}}')) == "metadata.m"
    assert httpx.get(f"{url}/api/rollouts").json()["total"] == 0
    [rollout] = _enqueue(url)
    claim = httpx.post(f"{url}/api/dequeue", json={"worker_id": "w"}).json()
    rewards = f"/api/rollouts/{rollout['rollout_id']}/rewards"
    assert _param(post(rewards, b'{"value": X}')) == "value"
    assert _param(post(rewards, b'{"dimensions": {"accuracy": X}}')) == "dimensions.accuracy"
    finish = f"/api/rollouts/{rollout['rollout_id']}/attempts/{claim['attempt']['attempt_id']}/finish"
    assert _param(post(finish, b'{"status": "succeeded", "reward": X}')) == "reward"
    assert _param(post("/api/dequeue", b'{"worker_id": "w", "wait_s": X}')) == "wait_s"
    spans = httpx.get(f"{url}/api/rollouts/{rollout['rollout_id']}/spans").json()
    assert spans["total"] == 0  # no reward was stored


def test_dequeue_with_no_modes_is_400_at_once(server: BackgroundServer) -> None:
    _enqueue(server.url)
    r = httpx.post(f"{server.url}/api/dequeue", json={"worker_id": "w", "modes": [], "wait_s": 30}, timeout=5)
    assert _param(r) == "modes"
    assert httpx.get(f"{server.url}/api/rollouts").json()["items"][0]["status"] == "queuing"


def test_deep_json_is_400(server: BackgroundServer) -> None:
    deep = b'{"input": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    r = httpx.post(f"{server.url}/api/rollouts", content=deep, headers={"content-type": "application/json"})
    _assert_error(r, 400)
    assert httpx.get(f"{server.url}/api/rollouts").json()["total"] == 0


def test_openapi_documents_every_error_a_route_answers_with_the_error_body(server: BackgroundServer) -> None:
    document = httpx.get(f"{server.url}/openapi.json").json()
    paths = document["paths"]
    expected = {
        ("/api/rollouts", "post"): {"201", "400", "409", "413"},
        ("/api/rollouts/batch", "post"): {"201", "400", "409", "413"},
        ("/api/rollouts/{rollout_id}", "get"): {"200", "400", "404", "413"},
        ("/api/rollouts/{rollout_id}/cancel", "post"): {"200", "400", "404", "409", "413"},
        ("/api/rollouts/read", "post"): {"200", "400", "404", "413"},
        ("/api/model-versions", "post"): {"201", "400", "409", "413"},
        ("/api/model-versions/latest", "get"): {"200", "400", "404", "413"},
    }
    for (path, method), statuses in expected.items():
        responses = paths[path][method]["responses"]
        assert statuses <= set(responses), (path, method, sorted(responses))
        for status in statuses - {"200", "201"}:
            schema = responses[status]["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ErrorResponse"}, (path, status)
    dequeue = paths["/api/dequeue"]["post"]
    assert dequeue["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/DequeueRequest"
    }
    modes = document["components"]["schemas"]["DequeueRequest"]["properties"]["modes"]["anyOf"][0]
    assert modes["minItems"] == 1
    version = document["components"]["schemas"]["RolloutCreate"]["properties"]["model_version"]["anyOf"][0]
    assert version["maximum"] == 2**31 - 1
    traces = paths["/v1/traces"]["post"]
    assert {"application/x-protobuf", "application/json"} <= set(traces["requestBody"]["content"])
    assert {"200", "400", "404", "413", "415"} <= set(traces["responses"])


def test_openapi_documents_validation_errors_as_400_not_422(server: BackgroundServer) -> None:
    document = httpx.get(f"{server.url}/openapi.json").json()
    operations = [op for path in document["paths"].values() for op in path.values()]
    assert not [op["operationId"] for op in operations if "422" in op["responses"]]
    created = document["paths"]["/api/rollouts"]["post"]["responses"]["400"]
    assert created["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorResponse"}
    schemas = document["components"]["schemas"]
    assert "ErrorResponse" in schemas and "HTTPValidationError" not in schemas


def test_unknown_ids_are_404(server: BackgroundServer) -> None:
    _assert_error(httpx.get(f"{server.url}/api/rollouts/ro-nope"), 404, "ro-nope")
    [rollout] = _enqueue(server.url)
    r = httpx.post(
        f"{server.url}/api/rollouts/{rollout['rollout_id']}/attempts/at-nope/finish", json={"status": "succeeded"}
    )
    _assert_error(r, 404, "at-nope")
    r = httpx.post(f"{server.url}/api/rollouts/ro-nope/attempts/at-nope/heartbeat")
    assert r.status_code == 404


def test_illegal_status_transitions_are_409(server: BackgroundServer) -> None:
    [rollout] = _enqueue(server.url)
    claim = httpx.post(f"{server.url}/api/dequeue", json={"worker_id": "w"}).json()
    base = f"{server.url}/api/rollouts/{rollout['rollout_id']}/attempts/{claim['attempt']['attempt_id']}"
    assert httpx.post(f"{base}/finish", json={"status": "succeeded"}).status_code == 200
    _assert_error(httpx.post(f"{base}/finish", json={"status": "failed"}), 409, "succeeded")
    _assert_error(httpx.post(f"{base}/heartbeat"), 409)
    _assert_error(httpx.post(f"{server.url}/api/rollouts/{rollout['rollout_id']}/cancel"), 409)


def test_client_raises_typed_errors(server: BackgroundServer) -> None:
    async def scenario() -> None:
        async with ServerClient(server.url) as client:
            with pytest.raises(NotFound):
                await client.get_rollout("ro-missing")
            await client.enqueue([RolloutCreate(input=1)])
            claim = await client.dequeue("w")
            assert claim is not None
            await client.finish(claim.attempt, AttemptFinish(status="succeeded"))
            await client.finish(claim.attempt, AttemptFinish(status="succeeded"))  # a repeat is answered the same
            with pytest.raises(IllegalTransition):  # a different outcome for an ended attempt is refused
                await client.finish(claim.attempt, AttemptFinish(status="failed"))

    asyncio.run(scenario())


def test_oversize_body_is_413_by_length_and_when_chunked(small_limit_server: BackgroundServer) -> None:
    url = small_limit_server.url
    big = [{"input": "x" * 1000} for _ in range(10)]
    _assert_error(httpx.post(f"{url}/api/rollouts/batch", json=big), 413, "limit")

    def chunks():  # no Content-Length: the body streams in chunked
        yield b"["
        for i in range(10):
            yield (b"," if i else b"") + b'{"input": "' + b"x" * 1000 + b'"}'
        yield b"]"

    r = httpx.post(f"{url}/api/rollouts/batch", content=chunks(), headers={"content-type": "application/json"})
    _assert_error(r, 413, "limit")
    assert httpx.get(f"{url}/api/rollouts").json()["total"] == 0
    # A body under the limit still goes through, chunked or not.
    r = httpx.post(
        f"{url}/api/rollouts/batch", content=iter([b'[{"input": 1}]']), headers={"content-type": "application/json"}
    )
    assert r.status_code == 201, r.text


def test_unknown_route_is_a_json_404(server: BackgroundServer) -> None:
    _assert_error(httpx.get(f"{server.url}/api/nothing-here"), 404)


# -- auth ----------------------------------------------------------------------------------------


def test_requests_without_the_key_are_refused_when_a_key_is_set(keyed_server: BackgroundServer) -> None:
    url = keyed_server.url
    assert httpx.get(f"{url}/health").status_code == 200  # liveness stays open
    _assert_error(httpx.get(f"{url}/api/rollouts"), 401, "API key")
    _assert_error(httpx.get(f"{url}/api/rollouts", headers={"Authorization": "Bearer wrong"}), 401)
    _assert_error(httpx.post(f"{url}/v1/traces", content=b"", headers={"content-type": "application/x-protobuf"}), 401)
    r = httpx.post(f"{url}/api/rollouts", json={"input": 1}, headers={"x-api-key": "wrong"})
    assert r.status_code == 401
    ok = httpx.get(f"{url}/api/rollouts", headers={"Authorization": f"Bearer {keyed_server.config.api_key}"})
    assert ok.status_code == 200 and ok.json()["total"] == 0
    ok = httpx.get(f"{url}/api/rollouts", headers={"X-API-Key": str(keyed_server.config.api_key)})
    assert ok.status_code == 200
