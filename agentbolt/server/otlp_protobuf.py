"""Decode a protobuf ``ExportTraceServiceRequest`` (OTLP/HTTP ``application/x-protobuf``).

The mapping rules are in the docstring of :mod:`agentbolt.server.otlp`.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from typing import Any

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from agentbolt.errors import BadInput
from agentbolt.server.otlp_spans import KINDS, STATUS_CODES, ZERO_SPAN_ID, ZERO_TRACE_ID, attributed_span
from agentbolt.types import SpanIn


def decode_protobuf(body: bytes) -> list[SpanIn]:
    """The spans of a protobuf ``ExportTraceServiceRequest``, in request order.

    Raises:
        BadInput: the body is not valid protobuf, or a span breaks the rules (naming the span and field).
    """
    request = ExportTraceServiceRequest()
    try:
        request.ParseFromString(body)
    except DecodeError as e:
        raise BadInput(f"request body is not a valid protobuf ExportTraceServiceRequest: {e}") from None
    spans: list[SpanIn] = []
    for resource_spans in request.resource_spans:
        resource = _pb_attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            scope = scope_spans.scope.name or None
            for span in scope_spans.spans:
                index, name = len(spans), span.name
                try:
                    raw = {
                        "trace_id": _pb_id(span.trace_id, "trace_id", ZERO_TRACE_ID),
                        "span_id": _pb_id(span.span_id, "span_id", ZERO_SPAN_ID),
                        "parent_id": _pb_parent_id(span.parent_span_id),
                        "name": name,
                        "kind": _enum_name(span.kind, KINDS, "kind"),
                        "start_time_ns": span.start_time_unix_nano,
                        "end_time_ns": span.end_time_unix_nano,
                        "attributes": _pb_attributes(span.attributes),
                        "events": [
                            {
                                "name": event.name,
                                "time_ns": event.time_unix_nano,
                                "attributes": _pb_attributes(event.attributes),
                            }
                            for event in span.events
                        ],
                        "links": [
                            {
                                "trace_id": _pb_id(link.trace_id, f"links[{i}].trace_id", ZERO_TRACE_ID),
                                "span_id": _pb_id(link.span_id, f"links[{i}].span_id", ZERO_SPAN_ID),
                                "attributes": _pb_attributes(link.attributes),
                            }
                            for i, link in enumerate(span.links)
                        ],
                        "status": {
                            "code": _enum_name(span.status.code, STATUS_CODES, "status.code"),
                            "message": span.status.message,
                        },
                        "resource": resource,
                        "scope": scope,
                    }
                except BadInput as e:
                    raise BadInput(f"span {index} ({name!r}): {e}") from None
                spans.append(attributed_span(raw, index, name))
    return spans


def _pb_id(raw: bytes, field: str, zero: bytes) -> str:
    if len(raw) != len(zero):
        raise BadInput(f"{field} must be {len(zero)} bytes, got {len(raw)}")
    if raw == zero:
        raise BadInput(f"{field} is all zeros, which OpenTelemetry defines as invalid")
    return raw.hex()


def _pb_parent_id(raw: bytes) -> str | None:
    if not raw or raw == ZERO_SPAN_ID:
        return None
    if len(raw) != 8:
        raise BadInput(f"parent_span_id must be 8 bytes or empty, got {len(raw)}")
    return raw.hex()


def _enum_name(value: int, names: tuple[str, ...], field: str) -> str:
    if 0 <= value < len(names):
        return names[value]
    raise BadInput(f"{field} {value} is not one of 0-{len(names) - 1}")


def _pb_attributes(items: Iterable[KeyValue]) -> dict[str, Any]:
    return {kv.key: _pb_value(kv.value) for kv in items}


def _pb_value(value: AnyValue) -> Any:
    which = value.WhichOneof("value")
    if which == "string_value":
        return value.string_value
    if which == "int_value":
        return value.int_value
    if which == "bool_value":
        return value.bool_value
    if which == "double_value":
        return value.double_value
    if which == "array_value":
        return [_pb_value(item) for item in value.array_value.values]
    if which == "kvlist_value":
        return _pb_attributes(value.kvlist_value.values)
    if which == "bytes_value":
        return base64.b64encode(value.bytes_value).decode("ascii")
    return None
