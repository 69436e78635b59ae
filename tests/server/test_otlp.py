"""OTLP/HTTP trace decoding: real spans from the OpenTelemetry SDK, encoded by its own exporter."""

from __future__ import annotations

import base64
import gzip
import json
import tracemalloc
import zlib
from typing import Any

import pytest
from google.protobuf import json_format
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue, KeyValueList
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from agentbolt.errors import BadInput, PayloadTooLarge, UnsupportedMediaType
from agentbolt.semconv import ATTEMPT_ID, ROLLOUT_ID
from agentbolt.server.otlp import decode_trace_request, decompress, encode_trace_response
from agentbolt.types import SpanIn

PB = "application/x-protobuf"
JSON = "application/json"

ROOT = "agentbolt.attempt"
SPAN_ATTRIBUTES: dict[str, Any] = {
    "gen_ai.operation.name": "chat",
    "flag": True,
    "count": 42,
    "big": -(2**62),
    "ratio": 0.25,
    "strings": ["a", "b"],
    "ints": [1, 2, 3],
    "floats": [1.5, -2.0],
    "bools": [True, False],
}


@pytest.fixture(scope="module")
def sdk_spans() -> list[ReadableSpan]:
    """Six spans of every kind, with events, links, statuses; attribution on the resource."""
    exporter = InMemorySpanExporter()
    resource = Resource.create(
        {"service.name": "agent", ROLLOUT_ID: "ro-1", ATTEMPT_ID: "at-1", "host.tags": ["x", "y"]}
    )
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("my.agent", "1.0")
    other = provider.get_tracer("my.tools")
    with tracer.start_as_current_span(ROOT, kind=SpanKind.SERVER) as root:
        for key, value in SPAN_ATTRIBUTES.items():
            root.set_attribute(key, value)
        root.add_event("started", {"step": 1, "labels": ["p", "q"]})
        root.add_event("bare")
        with tracer.start_as_current_span("llm.call", kind=SpanKind.CLIENT) as llm:
            llm.set_attribute(ROLLOUT_ID, "ro-2")  # the span's own attribute wins over the resource's
            llm.set_status(Status(StatusCode.ERROR, "model timed out"))
        linked = llm.get_span_context()
        with other.start_as_current_span("tool", links=[Link(linked, {"why": "retry"})]) as tool:
            tool.set_status(Status(StatusCode.OK))
        with tracer.start_as_current_span("send", kind=SpanKind.PRODUCER):
            pass
        with tracer.start_as_current_span("receive", kind=SpanKind.CONSUMER):
            pass
    with tracer.start_as_current_span("orphan"):  # a second trace, a root span
        pass
    return list(exporter.get_finished_spans())


def _request(spans: list[ReadableSpan]) -> ExportTraceServiceRequest:
    """The official exporter's request, plus kvlist and bytes attributes the SDK cannot set itself."""
    request = encode_spans(spans)
    [span] = [s for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans if s.name == ROOT]
    nested = KeyValueList(values=[KeyValue(key="inner", value=AnyValue(int_value=7))])
    span.attributes.extend(
        [
            KeyValue(key="nested", value=AnyValue(kvlist_value=nested)),
            KeyValue(key="blob", value=AnyValue(bytes_value=b"\x00\xffhi")),
            KeyValue(key="empty", value=AnyValue()),
        ]
    )
    return request


def _plain(value: Any) -> Any:
    """SDK attribute values as the decoder gives them: tuples become lists."""
    if isinstance(value, tuple):
        return list(value)
    return value


def _expected(span: ReadableSpan) -> dict[str, Any]:
    ctx = span.get_span_context()
    assert ctx is not None
    attributes = {key: _plain(value) for key, value in (span.attributes or {}).items()}
    resource = {key: _plain(value) for key, value in span.resource.attributes.items()}
    return {
        "rollout_id": attributes.get(ROLLOUT_ID, resource[ROLLOUT_ID]),
        "attempt_id": resource[ATTEMPT_ID],
        "trace_id": format(ctx.trace_id, "032x"),
        "span_id": format(ctx.span_id, "016x"),
        "parent_id": format(span.parent.span_id, "016x") if span.parent else None,
        "name": span.name,
        "kind": span.kind.name,
        "start_time_ns": span.start_time,
        "end_time_ns": span.end_time,
        "attributes": attributes,
        "events": [
            {
                "name": event.name,
                "time_ns": event.timestamp,
                "attributes": {k: _plain(v) for k, v in (event.attributes or {}).items()},
            }
            for event in span.events
        ],
        "links": [
            {
                "trace_id": format(link.context.trace_id, "032x"),
                "span_id": format(link.context.span_id, "016x"),
                "attributes": {k: _plain(v) for k, v in (link.attributes or {}).items()},
            }
            for link in span.links
        ],
        "status": {"code": span.status.status_code.name, "message": span.status.description or ""},
        "resource": resource,
        "scope": span.instrumentation_scope.name if span.instrumentation_scope else None,
    }


def _to_otlp_json(request: ExportTraceServiceRequest, *, snake_case: bool = False) -> dict[str, Any]:
    """OTLP/JSON as the spec has it: protobuf JSON with enums as ints and ids re-encoded to hex."""
    document = json_format.MessageToDict(request, use_integers_for_enums=True, preserving_proto_field_name=snake_case)
    id_fields = ("trace_id", "span_id", "parent_span_id") if snake_case else ("traceId", "spanId", "parentSpanId")

    def hexify(obj: dict[str, Any]) -> None:
        for field in id_fields:
            if field in obj:
                obj[field] = base64.b64decode(obj[field]).hex()

    for resource_spans in document[("resource_spans" if snake_case else "resourceSpans")]:
        for scope_spans in resource_spans["scope_spans" if snake_case else "scopeSpans"]:
            for span in scope_spans["spans"]:
                hexify(span)
                for link in span.get("links", []):
                    hexify(link)
    return document


def _span_json(**fields: Any) -> bytes:
    """A one-span OTLP/JSON request; ``fields`` override or (with None) remove the span's fields."""
    span: dict[str, Any] = {
        "traceId": "5B8EFFF798038103D269B633813FC60C",
        "spanId": "EEE19B7EC3C1B174",
        "parentSpanId": "",
        "name": "step",
        "kind": 1,
        "startTimeUnixNano": "1544712660000000000",
        "endTimeUnixNano": 1544712661000000000,
        "attributes": [{"key": ROLLOUT_ID, "value": {"stringValue": "ro-1"}}],
    }
    for key, value in fields.items():
        if value is None:
            span.pop(key, None)
        else:
            span[key] = value
    return json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [span]}]}]}).encode()


def _span_pb(**fields: Any) -> bytes:
    request = ExportTraceServiceRequest()
    span = request.resource_spans.add().scope_spans.add().spans.add()
    span.trace_id, span.span_id, span.name = bytes(range(1, 17)), bytes(range(1, 9)), "step"
    span.attributes.add(key=ROLLOUT_ID, value=AnyValue(string_value="ro-1"))
    for key, value in fields.items():
        if key == "attributes":
            del span.attributes[:]
            span.attributes.extend(value)
        else:
            setattr(span, key, value)
    return request.SerializeToString()


def _bad(body: bytes, content_type: str, *fragments: str) -> BadInput:
    with pytest.raises(BadInput) as info:
        decode_trace_request(body, content_type)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    return info.value


# ---------------------------------------------------------------------------------------------
# Decoding real SDK output


def test_protobuf_from_the_official_encoder_decodes_every_field(sdk_spans: list[ReadableSpan]) -> None:
    decoded = decode_trace_request(_request(sdk_spans).SerializeToString(), PB)

    assert len(decoded) == len(sdk_spans) == 6
    by_id = {span.span_id: span for span in decoded}
    for sdk_span in sdk_spans:
        expected = _expected(sdk_span)
        got = by_id[expected["span_id"]].model_dump()
        if sdk_span.name == ROOT:
            expected["attributes"].update({"nested": {"inner": 7}, "blob": "AP9oaQ==", "empty": None})
        assert got == expected


def test_protobuf_decodes_kinds_parents_links_status_and_attribution(sdk_spans: list[ReadableSpan]) -> None:
    decoded = {s.name: s for s in decode_trace_request(encode_spans(sdk_spans).SerializeToString(), PB)}

    root = decoded[ROOT]
    assert root.kind == "SERVER" and root.parent_id is None
    assert root.attributes["strings"] == ["a", "b"] and root.attributes["big"] == -(2**62)
    assert root.events[0].attributes == {"step": 1, "labels": ["p", "q"]}
    assert root.resource["host.tags"] == ["x", "y"] and root.resource["service.name"] == "agent"
    assert root.scope == "my.agent"
    assert (root.rollout_id, root.attempt_id) == ("ro-1", "at-1")

    llm = decoded["llm.call"]
    assert llm.kind == "CLIENT" and llm.parent_id == root.span_id and llm.trace_id == root.trace_id
    assert (llm.rollout_id, llm.attempt_id) == ("ro-2", "at-1")
    assert (llm.status.code, llm.status.message) == ("ERROR", "model timed out")

    tool = decoded["tool"]
    assert tool.kind == "INTERNAL" and tool.scope == "my.tools" and tool.status.code == "OK"
    assert [(link.span_id, link.attributes) for link in tool.links] == [(llm.span_id, {"why": "retry"})]
    assert decoded["send"].kind == "PRODUCER" and decoded["receive"].kind == "CONSUMER"
    assert decoded["orphan"].parent_id is None and decoded["orphan"].trace_id != root.trace_id


def test_otlp_json_decodes_like_protobuf(sdk_spans: list[ReadableSpan]) -> None:
    request = _request(sdk_spans)
    from_protobuf = decode_trace_request(request.SerializeToString(), PB)

    document = _to_otlp_json(request)
    assert isinstance(document["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["startTimeUnixNano"], str)
    assert decode_trace_request(json.dumps(document).encode(), "application/json; charset=utf-8") == from_protobuf

    snake = _to_otlp_json(request, snake_case=True)
    assert "resource_spans" in snake
    assert decode_trace_request(json.dumps(snake).encode(), JSON) == from_protobuf


def test_otlp_json_accepts_enum_names_uppercase_hex_and_numbers() -> None:
    span = decode_trace_request(
        _span_json(
            kind="SPAN_KIND_CLIENT",
            status={"code": "STATUS_CODE_ERROR", "message": "boom"},
            parentSpanId="00F067AA0BA902B7",
            attributes=[
                {"key": ROLLOUT_ID, "value": {"stringValue": "ro-1"}},
                {"key": "n", "value": {"intValue": 5}},
                {"key": "s", "value": {"intValue": "-9223372036854775808"}},
                {"key": "d", "value": {"doubleValue": "Infinity"}},
                {"key": "url_b64", "value": {"bytesValue": "_-8"}},
                {"key": "arr", "value": {"arrayValue": {"values": [{"boolValue": True}, {}]}}},
                {
                    "key": "kv",
                    "value": {"kvlistValue": {"values": [{"key": "a", "value": {"doubleValue": 1}}]}},
                },
                {"key": "future", "value": {"someNewValue": 1}},
            ],
            droppedAttributesCount=0,  # known but unused, and unknown fields are ignored
            brandNewField={"x": 1},
        ),
        JSON,
    )[0]
    assert span.trace_id == "5b8efff798038103d269b633813fc60c" and span.span_id == "eee19b7ec3c1b174"
    assert span.parent_id == "00f067aa0ba902b7" and span.kind == "CLIENT"
    assert (span.status.code, span.status.message) == ("ERROR", "boom")
    assert span.start_time_ns == 1544712660000000000 and span.end_time_ns == 1544712661000000000
    assert span.attributes["n"] == 5 and span.attributes["s"] == -(2**63)
    assert span.attributes["d"] == float("inf") and span.attributes["url_b64"] == "/+8="
    assert span.attributes["arr"] == [True, None] and span.attributes["kv"] == {"a": 1.0}
    assert span.attributes["future"] is None


def test_empty_requests_decode_to_no_spans() -> None:
    assert decode_trace_request(b"", PB) == []
    assert decode_trace_request(b"{}", JSON) == []
    assert decode_trace_request(b'{"resourceSpans": []}', JSON) == []


def test_content_type_is_matched_case_insensitively_with_parameters() -> None:
    assert decode_trace_request(_span_pb(), "Application/X-Protobuf; foo=bar")[0].name == "step"
    assert decode_trace_request(_span_pb(), "application/protobuf")[0].name == "step"


def test_no_content_type_is_read_as_protobuf_otlps_default() -> None:
    assert decode_trace_request(_span_pb(), "")[0].name == "step"
    body, media_type = encode_trace_response("")
    assert media_type == PB and body == b""


def test_decoded_spans_are_spanin_models(sdk_spans: list[ReadableSpan]) -> None:
    decoded = decode_trace_request(encode_spans(sdk_spans).SerializeToString(), PB)
    assert all(isinstance(span, SpanIn) for span in decoded)


# ---------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize("content_type", ["text/plain", "application/jsonl", "multipart/form-data"])
def test_unsupported_content_type_is_415(content_type: str) -> None:
    with pytest.raises(UnsupportedMediaType) as info:
        decode_trace_request(b"{}", content_type)
    assert info.value.http_status == 415 and "application/x-protobuf" in str(info.value)
    with pytest.raises(UnsupportedMediaType):
        encode_trace_response(content_type)


def test_garbage_protobuf_is_bad_input() -> None:
    error = _bad(b"\x0a\xff\xff\xff\xff\x0f", PB, "not a valid protobuf")
    assert error.http_status == 400 and not isinstance(error, UnsupportedMediaType)
    _bad(b'{"resourceSpans": []}', PB, "protobuf")


@pytest.mark.parametrize("body", [b"{not json", b"\xff\xfe\x00", b"", b'{"resourceSpans": [}'])
def test_garbage_json_is_bad_input(body: bytes) -> None:
    _bad(body, JSON, "not valid JSON")


@pytest.mark.parametrize(
    ("document", "fragment"),
    [
        ([], "must be an object"),
        ({"resourceSpans": {}}, "resourceSpans must be a JSON array"),
        ({"resourceSpans": [1]}, "resourceSpans[0] must be a JSON object"),
        ({"resourceSpans": [{"scopeSpans": "x"}]}, "resourceSpans[0].scopeSpans must be a JSON array"),
        ({"resourceSpans": [{"scopeSpans": [{"spans": [[]]}]}]}, "spans[0] must be a JSON object"),
        (
            {"resourceSpans": [{"resource": {"attributes": [{"key": "k", "value": 3}]}}]},
            "resourceSpans[0].resource.attributes[0].value must be an AnyValue",
        ),
    ],
)
def test_json_of_the_wrong_shape_is_bad_input(document: Any, fragment: str) -> None:
    _bad(json.dumps(document).encode(), JSON, fragment)


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"name": 5}, "spans[0].name must be a string"),
        ({"kind": "SERVER_ISH"}, "spans[0].kind must be one of"),
        ({"kind": 9}, "kind must be one of"),
        ({"startTimeUnixNano": "soon"}, "startTimeUnixNano must be an integer"),
        ({"endTimeUnixNano": -1}, "endTimeUnixNano is out of range"),
        ({"attributes": {"k": "v"}}, "attributes must be a JSON array"),
        ({"attributes": [{"key": "k", "value": {"intValue": "1.5"}}]}, "attributes[0].value.intValue"),
        ({"attributes": [{"key": "k", "value": {"boolValue": "yes"}}]}, "boolValue must be true or false"),
        ({"attributes": [{"key": "k", "value": {"bytesValue": "!!"}}]}, "bytesValue must be a base64"),
        (
            {"attributes": [{"key": "k", "value": {"stringValue": "a", "intValue": 1}}]},
            "more than one of its value fields",
        ),
        ({"events": [{"name": "e", "timeUnixNano": "x"}]}, "events[0].timeUnixNano must be an integer"),
        ({"status": {"code": 3}}, "status.code must be one of"),
        ({"links": [{"traceId": "ab", "spanId": "eee19b7ec3c1b174"}]}, "links[0].traceId must be 32 hex"),
    ],
)
def test_json_fields_of_the_wrong_type_name_the_span_and_field(fields: dict[str, Any], fragment: str) -> None:
    _bad(_span_json(**fields), JSON, "spans[0]", fragment)


def test_deeply_nested_json_attribute_is_bad_input() -> None:
    value: dict[str, Any] = {"stringValue": "leaf"}
    for _ in range(200):
        value = {"arrayValue": {"values": [value]}}
    _bad(_span_json(attributes=[{"key": "deep", "value": value}]), JSON, "deeper than")


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"traceId": "W47/95gDgQPSabYzgT/GDA=="}, "traceId must be 32 hex characters"),  # base64, not hex
        ({"traceId": "5b8efff798038103d269b633813fc6"}, "traceId must be 32 hex characters"),
        ({"traceId": "zz8efff798038103d269b633813fc60c"}, "traceId must be 32 hex characters"),
        ({"traceId": None}, "traceId must be 32 hex characters"),
        ({"spanId": "eee19b7ec3c1b1"}, "spanId must be 16 hex characters"),
        ({"spanId": "0000000000000000"}, "spanId is all zeros"),
        ({"parentSpanId": "eee19b7e"}, "parentSpanId must be 16 hex characters or empty"),
    ],
)
def test_bad_json_ids_are_rejected(fields: dict[str, Any], fragment: str) -> None:
    _bad(_span_json(**fields), JSON, "span 0 ('step')", fragment)


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"trace_id": b"\x01" * 15}, "trace_id must be 16 bytes, got 15"),
        ({"trace_id": b""}, "trace_id must be 16 bytes, got 0"),
        ({"span_id": b"\x01" * 9}, "span_id must be 8 bytes, got 9"),
        ({"trace_id": bytes(16)}, "trace_id is all zeros"),
        ({"parent_span_id": b"\x01" * 4}, "parent_span_id must be 8 bytes or empty"),
        ({"kind": 9}, "kind 9 is not one of 0-5"),
    ],
)
def test_bad_protobuf_ids_and_enums_are_rejected(fields: dict[str, Any], fragment: str) -> None:
    _bad(_span_pb(**fields), PB, "span 0 ('step')", fragment)


def test_pb_zero_parent_means_root() -> None:
    assert decode_trace_request(_span_pb(parent_span_id=bytes(8)), PB)[0].parent_id is None


def test_span_without_rollout_id_is_rejected_naming_span_and_attribute(sdk_spans: list[ReadableSpan]) -> None:
    request = encode_spans(sdk_spans)
    for resource_spans in request.resource_spans:
        del resource_spans.resource.attributes[:]  # drop rollout and attempt ids from the resource
    # Request order is llm.call (which carries its own rollout id), then send: send is reported.
    assert [s.name for s in request.resource_spans[0].scope_spans[0].spans][:2] == ["llm.call", "send"]
    _bad(request.SerializeToString(), PB, "span 1 ('send') has no agentbolt.rollout_id", "set the attribute")
    _bad(_span_pb(attributes=[]), PB, "span 0 ('step') has no agentbolt.rollout_id")
    _bad(_span_json(attributes=[]), JSON, "span 0 ('step') has no agentbolt.rollout_id")


def test_span_with_attempt_but_no_rollout_is_rejected() -> None:
    attempt_only = [KeyValue(key=ATTEMPT_ID, value=AnyValue(string_value="at-1"))]
    _bad(
        _span_pb(attributes=attempt_only),
        PB,
        "span 0 ('step') has agentbolt.attempt_id but no agentbolt.rollout_id",
    )
    attempt_json = [{"key": ATTEMPT_ID, "value": {"stringValue": "at-1"}}]
    _bad(_span_json(attributes=attempt_json), JSON, "has agentbolt.attempt_id but no agentbolt.rollout_id")


def test_rollout_id_must_be_a_non_empty_string() -> None:
    as_int = [KeyValue(key=ROLLOUT_ID, value=AnyValue(int_value=5))]
    _bad(_span_pb(attributes=as_int), PB, "agentbolt.rollout_id must be a non-empty string, got 5")
    empty = [KeyValue(key=ROLLOUT_ID, value=AnyValue(string_value=""))]
    _bad(_span_pb(attributes=empty), PB, "agentbolt.rollout_id must be a non-empty string")


def test_span_the_model_refuses_is_bad_input_naming_the_field() -> None:
    _bad(_span_pb(name="x" * 1001), PB, "span 0 ('", "name: String should have at most 1000 characters")


def test_error_names_the_index_of_the_bad_span_across_the_request() -> None:
    request = ExportTraceServiceRequest.FromString(_span_pb())
    second = request.resource_spans.add().scope_spans.add().spans.add()
    second.CopyFrom(request.resource_spans[0].scope_spans[0].spans[0])
    second.name, second.span_id = "second", b"\x01" * 7
    _bad(request.SerializeToString(), PB, "span 1 ('second')", "span_id must be 8 bytes, got 7")


# ---------------------------------------------------------------------------------------------
# Responses


def test_protobuf_response_leaves_partial_success_unset_when_all_accepted() -> None:
    body, media_type = encode_trace_response(PB)
    assert media_type == PB
    assert not ExportTraceServiceResponse.FromString(body).HasField("partial_success")

    body, _ = encode_trace_response("application/x-protobuf", rejected_spans=2, error_message="2 spans late")
    partial = ExportTraceServiceResponse.FromString(body).partial_success
    assert (partial.rejected_spans, partial.error_message) == (2, "2 spans late")


def test_json_response_follows_the_protobuf_json_mapping() -> None:
    body, media_type = encode_trace_response("application/json; charset=utf-8")
    assert (json.loads(body), media_type) == ({}, JSON)

    body, _ = encode_trace_response(JSON, rejected_spans=3, error_message="bad")
    assert json.loads(body) == {"partialSuccess": {"rejectedSpans": "3", "errorMessage": "bad"}}
    parsed = json_format.Parse(body, ExportTraceServiceResponse())
    assert parsed.partial_success.rejected_spans == 3


# ---------------------------------------------------------------------------------------------
# Decompression


def test_decompress_gzip_deflate_and_identity() -> None:
    payload = _span_pb() * 3
    assert decompress(payload, None, 10_000) == payload
    assert decompress(payload, "identity", 10_000) == payload
    assert decompress(gzip.compress(payload), "gzip", 10_000) == payload
    assert decompress(gzip.compress(payload), " GZIP ", 10_000) == payload
    assert decompress(gzip.compress(payload) + gzip.compress(b"!"), "x-gzip", 10_000) == payload + b"!"
    assert decompress(zlib.compress(payload), "deflate", 10_000) == payload
    raw = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    assert decompress(raw.compress(payload) + raw.flush(), "deflate", 10_000) == payload
    assert decompress(gzip.compress(zlib.compress(payload)), "deflate, gzip", 10_000) == payload


def test_decompressed_body_decodes() -> None:
    body = decompress(gzip.compress(_span_pb()), "gzip", 1 << 20)
    assert decode_trace_request(body, PB)[0].name == "step"


@pytest.mark.parametrize(
    ("body", "encoding", "fragment"),
    [
        (b"definitely not gzip", "gzip", "gzip request body is corrupt"),
        (gzip.compress(b"x" * 1000)[:-12], "gzip", "truncated"),
        (b"", "gzip", "truncated"),
        (b"\x78\x9c\xff\xff\xff", "deflate", "deflate request body is corrupt"),
        (zlib.compress(b"abc") + b"junk", "deflate", "data after the end"),
    ],
)
def test_corrupt_compressed_body_is_bad_input(body: bytes, encoding: str, fragment: str) -> None:
    with pytest.raises(BadInput) as info:
        decompress(body, encoding, 1 << 20)
    assert fragment in str(info.value) and not isinstance(info.value, PayloadTooLarge)


def test_unknown_content_encoding_is_415() -> None:
    with pytest.raises(UnsupportedMediaType):
        decompress(b"x", "br", 1 << 20)


def test_gzip_bomb_is_refused_without_inflating_it() -> None:
    expanded = 64 << 20
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    chunk = bytes(1 << 20)
    bomb = b"".join(compressor.compress(chunk) for _ in range(expanded >> 20)) + compressor.flush()
    assert len(bomb) < 100_000

    tracemalloc.start()
    try:
        with pytest.raises(PayloadTooLarge) as info:
            decompress(bomb, "gzip", 1 << 20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.value.http_status == 413 and "1048576 bytes" in str(info.value)
    assert peak < 8 << 20  # far below the 64 MiB the bomb expands to


def test_body_over_the_limit_is_too_large_even_uncompressed() -> None:
    with pytest.raises(PayloadTooLarge):
        decompress(b"x" * 2000, None, 1000)
    assert decompress(gzip.compress(b"x" * 1000), "gzip", 1000) == b"x" * 1000
    with pytest.raises(PayloadTooLarge):
        decompress(gzip.compress(b"x" * 1001), "gzip", 1000)
