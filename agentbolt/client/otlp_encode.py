"""Ended OTel SDK spans to an OTLP ``ExportTraceServiceRequest``, written straight in protobuf's wire format.

The same bytes the OTel exporter's ``encode_spans`` + ``SerializeToString`` produce (a test compares them
field by field), at about half its CPU: that one builds a message object per span, attribute and value
through generic type dispatch. Field numbers are those of ``opentelemetry/proto/trace/v1/trace.proto``,
``common.proto`` and ``resource.proto``.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan

_LEN, _VARINT, _FIXED64, _FIXED32 = 2, 0, 1, 5
_DOUBLE = struct.Struct("<d")
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")
_U64_MASK = (1 << 64) - 1
_ONE_BYTE = [bytes((i,)) for i in range(128)]  # varints under 128: most lengths and tags


def _varint(value: int) -> bytes:
    value &= _U64_MASK  # negative int64 values are sent as their two's complement
    if value < 0x80:
        return _ONE_BYTE[value]
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _tag(field: int, wire_type: int) -> bytes:
    return _varint(field << 3 | wire_type)


def _field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field: its (pre-encoded) tag, the payload's length, the payload."""
    size = len(payload)
    return tag + (_ONE_BYTE[size] if size < 0x80 else _varint(size)) + payload


def _bytes_field(field: int, payload: bytes) -> bytes:
    return _field(_tag(field, _LEN), payload)


def _str_field(field: int, text: str) -> bytes:
    return _bytes_field(field, text.encode()) if text else b""


def _any_value(value: Any) -> bytes:
    """An ``AnyValue``: the SDK keeps attribute values as str, bool, int, float, bytes or sequences of them."""
    if isinstance(value, str):
        return _field(b"\x0a", value.encode())
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, int):
        return b"\x18" + _varint(value)
    if isinstance(value, float):
        return b"\x21" + _DOUBLE.pack(value)
    if isinstance(value, bytes):
        return _bytes_field(7, value)
    if isinstance(value, Mapping):
        return _bytes_field(6, _attributes(1, value))
    if isinstance(value, Sequence):
        return _bytes_field(5, b"".join(_bytes_field(1, _any_value(item)) for item in value))
    return _bytes_field(1, str(value).encode())


@functools.lru_cache(maxsize=4096, typed=True)
def _key_value(key: str, value: Any) -> bytes:
    """A ``KeyValue``'s payload, kept for scalar values: a span's rollout and attempt ids, its operation name
    and the like repeat on every span of an attempt."""
    return _field(b"\x0a", key.encode()) + _field(b"\x12", _any_value(value))


def _attributes(field: int, attributes: Mapping[str, Any] | None) -> bytes:
    """Repeated ``KeyValue`` under ``field``."""
    return _attributes_tagged(_tag(field, _LEN), attributes)


def _attributes_tagged(tag: bytes, attributes: Mapping[str, Any] | None) -> bytes:
    if not attributes:
        return b""
    return b"".join(
        _field(
            tag,
            _key_value(key, value)
            if isinstance(value, (str, bool, int, float))
            else _key_value.__wrapped__(key, value),
        )
        for key, value in attributes.items()
    )


# Tags of the Span fields every span has (field number << 3 | wire type), encoded once.
_TRACE_ID, _SPAN_ID, _PARENT_ID, _NAME = b"\x0a", b"\x12", b"\x22", b"\x2a"
_KIND, _START, _END, _FLAGS = b"\x30", b"\x39", b"\x41", b"\x85\x01"
_SPAN_ATTRIBUTES = _tag(9, _LEN)


def _span(span: ReadableSpan) -> bytes:
    context = span.get_span_context()
    assert context is not None  # an SDK span always has one
    parts = [
        _field(_TRACE_ID, context.trace_id.to_bytes(16, "big")),
        _field(_SPAN_ID, context.span_id.to_bytes(8, "big")),
    ]
    if context.trace_state:
        parts.append(_str_field(3, context.trace_state.to_header()))
    parent = span.parent
    if parent is not None:
        parts.append(_field(_PARENT_ID, parent.span_id.to_bytes(8, "big")))
    parts += [
        _field(_NAME, span.name.encode()) if span.name else b"",
        _KIND + _ONE_BYTE[span.kind.value + 1],  # the SDK's SpanKind counts from INTERNAL = 0, OTLP's from 1
        _START + _U64.pack(span.start_time or 0),
        _END + _U64.pack(span.end_time or 0),
        _attributes_tagged(_SPAN_ATTRIBUTES, span.attributes),
    ]
    if span.dropped_attributes:
        parts.append(_tag(10, _VARINT) + _varint(span.dropped_attributes))
    for event in span.events:
        body = _tag(1, _FIXED64) + _U64.pack(event.timestamp) + _str_field(2, event.name)
        body += _attributes(3, event.attributes)
        if event.dropped_attributes:
            body += _tag(4, _VARINT) + _varint(event.dropped_attributes)
        parts.append(_bytes_field(11, body))
    if span.dropped_events:
        parts.append(_tag(12, _VARINT) + _varint(span.dropped_events))
    for link in span.links:
        body = _bytes_field(1, link.context.trace_id.to_bytes(16, "big"))
        body += _bytes_field(2, link.context.span_id.to_bytes(8, "big"))
        body += _str_field(3, link.context.trace_state.to_header() if link.context.trace_state else "")
        body += _attributes(4, link.attributes)
        if link.dropped_attributes:
            body += _tag(5, _VARINT) + _varint(link.dropped_attributes)
        body += _tag(6, _FIXED32) + _U32.pack(_flags(link.context.is_remote))
        parts.append(_bytes_field(13, body))
    if span.dropped_links:
        parts.append(_tag(14, _VARINT) + _varint(span.dropped_links))
    status = _str_field(2, span.status.description or "")
    if span.status.status_code.value:
        status += _tag(3, _VARINT) + _varint(span.status.status_code.value)  # UNSET 0, OK 1, ERROR 2 on both sides
    if status:
        parts.append(_bytes_field(15, status))
    parts.append(_FLAGS + _U32.pack(_flags(parent is not None and parent.is_remote)))
    return b"".join(parts)


def _flags(remote: bool) -> int:
    """OTLP span flags as the OTel exporter sets them: whether the parent (or linked) span is remote."""
    has_is_remote, is_remote = 0x100, 0x200  # SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK, ..._IS_REMOTE_MASK
    return has_is_remote | (is_remote if remote else 0)


def encode_request(spans: Sequence[ReadableSpan]) -> bytes:
    """Serialized ``ExportTraceServiceRequest`` of ``spans``: one ``ResourceSpans`` per resource, one
    ``ScopeSpans`` per instrumentation scope within it, spans in the order given."""
    groups: dict[int, tuple[Any, dict[int, tuple[Any, list[bytes]]]]] = {}
    for span in spans:
        resource_group = groups.setdefault(id(span.resource), (span.resource, {}))
        scope = span.instrumentation_scope
        _, encoded = resource_group[1].setdefault(id(scope), (scope, []))
        encoded.append(_span(span))
    out = []
    for resource, scopes in groups.values():
        body = _bytes_field(1, _attributes(1, resource.attributes)) if resource is not None else b""
        for scope, encoded in scopes.values():
            scope_body = b""
            if scope is not None:
                scope_body = _bytes_field(
                    1, _str_field(1, scope.name) + _str_field(2, scope.version or "") + _attributes(3, scope.attributes)
                )
            scope_body += b"".join(_bytes_field(2, s) for s in encoded)
            if scope is not None and scope.schema_url:
                scope_body += _str_field(3, scope.schema_url)
            body += _bytes_field(2, scope_body)
        if resource is not None and resource.schema_url:
            body += _str_field(3, resource.schema_url)
        out.append(_bytes_field(1, body))
    return b"".join(out)
