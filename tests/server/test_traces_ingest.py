"""POST /v1/traces over real HTTP, fed by the official OpenTelemetry OTLP/HTTP exporter."""

from __future__ import annotations

import gzip
import json

import httpx
from google.protobuf.json_format import MessageToDict
from google.rpc import status_pb2
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Status, StatusCode

from agentbolt.server.background import BackgroundServer


def _claim(url: str) -> tuple[str, str]:
    httpx.post(f"{url}/api/rollouts", json={"input": 1}).raise_for_status()
    claim = httpx.post(f"{url}/api/dequeue", json={"worker_id": "w"}).json()
    return claim["rollout"]["rollout_id"], claim["attempt"]["attempt_id"]


def _make_spans(rollout_id: str | None, attempt_id: str | None, on_resource: bool = False) -> list[ReadableSpan]:
    ids = {}
    if rollout_id:
        ids["agentbolt.rollout_id"] = rollout_id
    if attempt_id:
        ids["agentbolt.attempt_id"] = attempt_id
    memory = InMemorySpanExporter()
    resource = Resource.create({"service.name": "test-agent", **(ids if on_resource else {})})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("test")
    span_attrs = {} if on_resource else ids
    with tracer.start_as_current_span("invoke_agent writer", attributes={**span_attrs, "gen_ai.agent.name": "writer"}):
        with tracer.start_as_current_span("execute_tool search", attributes=span_attrs) as tool:
            tool.set_attribute("agentbolt.tool.success", False)
            tool.set_attribute("scores", [0.5, 1.5])
            tool.add_event("retry", {"n": 2})
            tool.set_status(Status(StatusCode.ERROR, "no results"))
    return list(memory.get_finished_spans())


def _stored(url: str, rollout_id: str) -> list[dict]:
    return httpx.get(f"{url}/api/rollouts/{rollout_id}/spans").json()["items"]


def test_official_protobuf_exporter_spans_are_stored_with_their_rollout(server: BackgroundServer) -> None:
    rollout_id, attempt_id = _claim(server.url)
    exporter = OTLPSpanExporter(endpoint=f"{server.url}/v1/traces")
    assert exporter.export(_make_spans(rollout_id, attempt_id)) is SpanExportResult.SUCCESS
    spans = _stored(server.url, rollout_id)
    assert sorted(s["name"] for s in spans) == ["execute_tool search", "invoke_agent writer"]
    assert {s["attempt_id"] for s in spans} == {attempt_id}
    assert sorted(s["sequence_id"] for s in spans) == [0, 1]
    tool = next(s for s in spans if s["name"] == "execute_tool search")
    agent = next(s for s in spans if s["name"] == "invoke_agent writer")
    assert tool["parent_id"] == agent["span_id"]
    assert tool["attributes"]["scores"] == [0.5, 1.5]
    assert tool["attributes"]["agentbolt.tool.success"] is False
    assert tool["status"] == {"code": "ERROR", "message": "no results"}
    assert tool["events"][0]["name"] == "retry"
    assert tool["resource"]["service.name"] == "test-agent"


def test_gzip_compressed_export_is_accepted(server: BackgroundServer) -> None:
    rollout_id, attempt_id = _claim(server.url)
    exporter = OTLPSpanExporter(endpoint=f"{server.url}/v1/traces", compression=Compression.Gzip)
    assert exporter.export(_make_spans(rollout_id, attempt_id)) is SpanExportResult.SUCCESS
    assert len(_stored(server.url, rollout_id)) == 2


def test_ids_on_the_resource_attribute_the_spans(server: BackgroundServer) -> None:
    rollout_id, attempt_id = _claim(server.url)
    exporter = OTLPSpanExporter(endpoint=f"{server.url}/v1/traces")
    assert exporter.export(_make_spans(rollout_id, attempt_id, on_resource=True)) is SpanExportResult.SUCCESS
    assert {s["attempt_id"] for s in _stored(server.url, rollout_id)} == {attempt_id}


def test_resent_spans_are_stored_once(server: BackgroundServer) -> None:
    rollout_id, attempt_id = _claim(server.url)
    spans = _make_spans(rollout_id, attempt_id)
    exporter = OTLPSpanExporter(endpoint=f"{server.url}/v1/traces")
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    assert len(_stored(server.url, rollout_id)) == 2


def _otlp_json(spans: list[ReadableSpan]) -> dict:
    """OTLP/JSON as the spec defines it: camelCase, hex ids (not protobuf's base64)."""
    import base64

    data = MessageToDict(encode_spans(spans))
    for rs in data["resourceSpans"]:
        for ss in rs["scopeSpans"]:
            for span in ss["spans"]:
                for key in ("traceId", "spanId", "parentSpanId"):
                    if key in span:
                        span[key] = base64.b64decode(span[key]).hex()
    return data


def test_otlp_json_is_stored_like_protobuf(server: BackgroundServer) -> None:
    rollout_id, attempt_id = _claim(server.url)
    body = json.dumps(_otlp_json(_make_spans(rollout_id, attempt_id)))
    r = httpx.post(f"{server.url}/v1/traces", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    spans = _stored(server.url, rollout_id)
    assert len(spans) == 2
    tool = next(s for s in spans if s["name"] == "execute_tool search")
    assert tool["attributes"]["scores"] == [0.5, 1.5]


def _rollout_count(url: str) -> int:
    return sum(len(_stored(url, r["rollout_id"])) for r in httpx.get(f"{url}/api/rollouts").json()["items"])


def test_unknown_rollout_is_404_with_an_otlp_status_and_nothing_stored(server: BackgroundServer) -> None:
    rollout_id, attempt_id = _claim(server.url)
    good = _make_spans(rollout_id, attempt_id)
    bad = _make_spans("ro-does-not-exist", None)
    body = encode_spans(good + bad).SerializeToString()
    r = httpx.post(f"{server.url}/v1/traces", content=body, headers={"content-type": "application/x-protobuf"})
    assert r.status_code == 404
    status = status_pb2.Status.FromString(r.content)
    assert "ro-does-not-exist" in status.message
    assert _stored(server.url, rollout_id) == []


def test_span_of_another_rollouts_attempt_is_refused(server: BackgroundServer) -> None:
    rollout_a, _ = _claim(server.url)
    _, attempt_b = _claim(server.url)
    body = encode_spans(_make_spans(rollout_a, attempt_b)).SerializeToString()
    r = httpx.post(f"{server.url}/v1/traces", content=body, headers={"content-type": "application/x-protobuf"})
    assert r.status_code == 404
    assert _stored(server.url, rollout_a) == []


def test_span_without_rollout_id_is_400(server: BackgroundServer) -> None:
    body = json.dumps(_otlp_json(_make_spans(None, None)))
    r = httpx.post(f"{server.url}/v1/traces", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert "agentbolt.rollout_id" in r.json()["message"]


def test_malformed_payloads_are_400_and_wrong_type_415(server: BackgroundServer) -> None:
    url = f"{server.url}/v1/traces"
    r = httpx.post(url, content=b"\xff\x00garbage", headers={"content-type": "application/x-protobuf"})
    assert r.status_code == 400
    assert status_pb2.Status.FromString(r.content).message
    r = httpx.post(url, content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["message"]
    r = httpx.post(url, content=b'{"resourceSpans": 5}', headers={"content-type": "application/json"})
    assert r.status_code == 400 and "resourceSpans" in r.json()["message"]
    r = httpx.post(url, content=b"hello", headers={"content-type": "text/plain"})
    assert r.status_code == 415 and "application/x-protobuf" in r.json()["message"]
    r = httpx.post(
        url,
        content=b"not gzip",
        headers={"content-type": "application/x-protobuf", "content-encoding": "gzip"},
    )
    assert r.status_code == 400
    assert _rollout_count(server.url) == 0


def test_gzip_bomb_over_the_limit_is_413(small_limit_server: BackgroundServer) -> None:
    bomb = gzip.compress(b"\x00" * (4 * 1024 * 1024))  # ~4 KiB compressed, 4 MiB inflated
    r = httpx.post(
        f"{small_limit_server.url}/v1/traces",
        content=bomb,
        headers={"content-type": "application/x-protobuf", "content-encoding": "gzip"},
    )
    assert r.status_code == 413


def _spans_with_values(rollout_id: str, attempt_id: str, **attributes: object) -> list[ReadableSpan]:
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "test-agent"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    ids = {"agentbolt.rollout_id": rollout_id, "agentbolt.attempt_id": attempt_id}
    with provider.get_tracer("test").start_as_current_span("step", attributes={**ids, **attributes}):  # type: ignore[arg-type]
        pass
    return list(memory.get_finished_spans())


def test_non_finite_attribute_values_are_dropped_and_reported_in_partial_success(server: BackgroundServer) -> None:
    rollout_id, attempt_id = _claim(server.url)
    spans = _spans_with_values(rollout_id, attempt_id, score=float("nan"), big=float("inf"), kept=1.5)
    body = encode_spans(spans).SerializeToString()
    r = httpx.post(f"{server.url}/v1/traces", content=body, headers={"content-type": "application/x-protobuf"})
    assert r.status_code == 200
    response = ExportTraceServiceResponse.FromString(r.content)
    assert response.partial_success.rejected_spans == 0
    message = response.partial_success.error_message
    assert "'score'" in message and "'big'" in message and "'kept'" not in message
    [stored] = _stored(server.url, rollout_id)
    assert stored["attributes"]["kept"] == 1.5
    assert "score" not in stored["attributes"] and "big" not in stored["attributes"]


def test_a_reward_span_with_a_non_finite_reward_is_rejected_and_counted(server: BackgroundServer) -> None:
    rollout_id, attempt_id = _claim(server.url)
    good = _make_spans(rollout_id, attempt_id)
    bad = _spans_with_values(rollout_id, attempt_id, **{"agentbolt.reward.value": float("nan")})
    document = _otlp_json(good + bad)
    r = httpx.post(f"{server.url}/v1/traces", json=document)
    assert r.status_code == 200, r.text
    partial = r.json()["partialSuccess"]
    assert partial["rejectedSpans"] == "1" and "agentbolt.reward.value" in partial["errorMessage"]
    assert sorted(s["name"] for s in _stored(server.url, rollout_id)) == ["execute_tool search", "invoke_agent writer"]


def test_nan_literals_in_otlp_json_are_dropped_not_stored_as_null(server: BackgroundServer) -> None:
    rollout_id, attempt_id = _claim(server.url)
    document = json.dumps(_otlp_json(_spans_with_values(rollout_id, attempt_id, score=0.25)))
    for literal in ('"NaN"', "NaN", "1e999"):
        body = document.replace("0.25", literal)
        r = httpx.post(f"{server.url}/v1/traces", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 200, r.text
        assert "'score'" in r.json()["partialSuccess"]["errorMessage"]
    assert all("score" not in s["attributes"] for s in _stored(server.url, rollout_id))


def test_a_request_without_content_type_is_read_as_protobuf(server: BackgroundServer) -> None:
    rollout_id, attempt_id = _claim(server.url)
    body = encode_spans(_make_spans(rollout_id, attempt_id)).SerializeToString()
    r = httpx.post(f"{server.url}/v1/traces", content=body)
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-protobuf"
    assert len(_stored(server.url, rollout_id)) == 2


def test_span_times_beyond_a_signed_64_bit_integer_are_400(server: BackgroundServer) -> None:
    rollout_id, attempt_id = _claim(server.url)
    document = _otlp_json(_make_spans(rollout_id, attempt_id))
    document["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["startTimeUnixNano"] = str(2**64 - 1)
    r = httpx.post(f"{server.url}/v1/traces", json=document)
    assert r.status_code == 400 and "start_time_ns" in r.json()["message"]
    assert _stored(server.url, rollout_id) == []


def test_deep_json_is_400(server: BackgroundServer) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    r = httpx.post(f"{server.url}/v1/traces", content=deep, headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["message"]
