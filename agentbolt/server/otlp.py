"""Decode OTLP/HTTP trace export requests (``POST /v1/traces``) into :class:`~agentbolt.types.SpanIn`.

Pure functions, no web framework: the route reads the body, calls :func:`decompress` for any
``Content-Encoding``, :func:`decode_trace_request` to get the spans, and answers with
:func:`encode_trace_response`.

Mapping rules (public: users' own OpenTelemetry setups rely on them)
--------------------------------------------------------------------

Encodings
    ``application/x-protobuf`` (also ``application/protobuf``): an ``ExportTraceServiceRequest``.
    ``application/json``: OTLP/JSON, the protobuf JSON mapping with OTLP's exceptions: trace and
    span ids are hex strings (any case), not base64; enums are integers (enum names such as
    ``"SPAN_KIND_SERVER"`` are accepted too); 64-bit integers may be strings or numbers; field
    names are lowerCamelCase and the original snake_case names are accepted too; unknown fields
    are ignored; ``null`` means "not set". Media-type parameters (``; charset=utf-8``) are ignored.
    The response uses the request's encoding.

Attribution
    ``rollout_id`` is the span attribute ``agentbolt.rollout_id``, else the resource attribute of
    the same key; ``attempt_id`` likewise from ``agentbolt.attempt_id``. Each key is looked up on
    the span first, then on the resource. Both must be non-empty strings. A span without a rollout
    id is rejected, so is one with an attempt id but no rollout id. The attributes stay in
    ``attributes``/``resource`` as sent.

Ids
    ``trace_id`` (16 bytes) and ``span_id`` (8 bytes) become lowercase hex (32 and 16 characters);
    all-zero ids are invalid (the OpenTelemetry spec says so). ``parent_span_id`` becomes
    ``parent_id``; empty or all-zero means no parent (``None``). Links' ids follow the same rules.

Fields
    ``name``; ``kind`` 0-5 → ``"UNSPECIFIED"``, ``"INTERNAL"``, ``"SERVER"``, ``"CLIENT"``,
    ``"PRODUCER"``, ``"CONSUMER"``; ``start_time_unix_nano``/``end_time_unix_nano`` →
    ``start_time_ns``/``end_time_ns``; events → ``{name, time_ns, attributes}``; links →
    ``{trace_id, span_id, attributes}``; status code 0/1/2 → ``"UNSET"``/``"OK"``/``"ERROR"``
    with its message; resource attributes → ``resource``; instrumentation scope name → ``scope``
    (``None`` when empty). Not kept: trace state, flags, dropped-item counts, schema URLs, scope
    version and scope attributes.

Attribute values
    Keys are kept as given (flat dotted keys). AnyValue becomes: string → ``str``, bool → ``bool``,
    int → ``int``, double → ``float``, array → ``list``, kvlist → ``dict``, bytes → standard
    base64 ``str``, empty → ``None``. A key given twice keeps its last value.

Errors
    Every problem raises :class:`~agentbolt.errors.BadInput` naming the span (its index in the
    request, counting from 0, and its name) and the field: an unsupported content type or content
    encoding (:class:`~agentbolt.errors.UnsupportedMediaType`, 415), a body too large once
    decompressed (:class:`~agentbolt.errors.PayloadTooLarge`, 413), malformed protobuf or JSON,
    JSON not shaped like OTLP, bad ids, unknown enum values, missing attribution, and anything
    :class:`~agentbolt.types.SpanIn` refuses. One bad span rejects the whole request, so nothing is
    dropped silently.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import zlib
from collections.abc import Iterable
from typing import Any, Literal

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from pydantic import ValidationError

from agentbolt.errors import BadInput, PayloadTooLarge, UnsupportedMediaType
from agentbolt.semconv import ATTEMPT_ID, ROLLOUT_ID
from agentbolt.types import SpanIn

__all__ = ["JSON", "PROTOBUF", "decode_trace_request", "decompress", "encode_trace_response"]

PROTOBUF = "application/x-protobuf"
JSON = "application/json"

_Encoding = Literal["protobuf", "json"]
_MEDIA_TYPES: dict[str, _Encoding] = {
    "application/x-protobuf": "protobuf",
    "application/protobuf": "protobuf",
    "application/json": "json",
}

# Indexed by the protobuf enum value.
_KINDS = ("UNSPECIFIED", "INTERNAL", "SERVER", "CLIENT", "PRODUCER", "CONSUMER")
_KIND_NAMES = {f"SPAN_KIND_{kind}": value for value, kind in enumerate(_KINDS)}
_STATUS_CODES = ("UNSET", "OK", "ERROR")
_STATUS_NAMES = {f"STATUS_CODE_{code}": value for value, code in enumerate(_STATUS_CODES)}

_ZERO_TRACE_ID = bytes(16)
_ZERO_SPAN_ID = bytes(8)
_HEX = re.compile(r"[0-9a-fA-F]*")
_INT = re.compile(r"-?[0-9]+")
_UINT64_MAX = 2**64 - 1
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_MAX_VALUE_DEPTH = 64  # nesting of arrays/kvlists in one attribute value (protobuf's own limit is ~45)


def decode_trace_request(body: bytes, content_type: str) -> list[SpanIn]:
    """Decode an OTLP/HTTP ``ExportTraceServiceRequest`` into validated spans, in request order.

    Args:
        body: the request body, already decompressed (see :func:`decompress`).
        content_type: the request's ``Content-Type`` header, parameters allowed.

    Raises:
        UnsupportedMediaType: the content type is neither protobuf nor JSON.
        BadInput: the body is malformed or a span breaks the rules in this module's docstring;
            the message names the span's index and name and the offending field.
    """
    if _encoding(content_type) == "protobuf":
        return _decode_protobuf(body)
    return _decode_json(body)


def encode_trace_response(content_type: str, rejected_spans: int = 0, error_message: str = "") -> tuple[bytes, str]:
    """Encode an ``ExportTraceServiceResponse`` in the request's encoding.

    ``partial_success`` is left unset when nothing was rejected and there is no message, as the
    OTLP spec asks. Returns ``(body, media_type)``.

    Raises:
        UnsupportedMediaType: ``content_type`` is neither protobuf nor JSON.
    """
    if rejected_spans < 0:
        raise ValueError(f"rejected_spans must be >= 0, got {rejected_spans}")
    partial = bool(rejected_spans or error_message)
    if _encoding(content_type) == "protobuf":
        response = ExportTraceServiceResponse()
        if partial:
            response.partial_success.rejected_spans = rejected_spans
            response.partial_success.error_message = error_message
        return response.SerializeToString(), PROTOBUF
    document: dict[str, Any] = {}
    if partial:
        success: dict[str, Any] = {}
        if rejected_spans:
            success["rejectedSpans"] = str(rejected_spans)  # int64 is a string in protobuf JSON
        if error_message:
            success["errorMessage"] = error_message
        document["partialSuccess"] = success
    return json.dumps(document, separators=(",", ":")).encode(), JSON


def decompress(body: bytes, content_encoding: str | None, max_bytes: int) -> bytes:
    """Undo the request's ``Content-Encoding`` (gzip, deflate, identity, or a comma list of them).

    Decompression is incremental and stops as soon as the output passes ``max_bytes``, so a
    small compressed body cannot expand to exhaust memory.

    Raises:
        UnsupportedMediaType: an encoding other than gzip, x-gzip, deflate or identity.
        PayloadTooLarge: the decompressed body is larger than ``max_bytes``.
        BadInput: the compressed data is corrupt or truncated.
    """
    codings = [c.strip().lower() for c in (content_encoding or "").split(",")]
    data = body
    for coding in reversed(codings):  # the last listed coding was applied last
        if coding in ("", "identity"):
            continue
        if coding in ("gzip", "x-gzip"):
            data = _inflate(data, max_bytes, "gzip")
        elif coding == "deflate":
            data = _inflate(data, max_bytes, "deflate")
        else:
            raise UnsupportedMediaType(f"Content-Encoding {coding!r} is not supported: send gzip, deflate or identity")
    if len(data) > max_bytes:
        raise _too_large(max_bytes)
    return data


# ---------------------------------------------------------------------------------------------
# Shared


def _encoding(content_type: str) -> _Encoding:
    media_type = content_type.split(";", 1)[0].strip().lower()
    encoding = _MEDIA_TYPES.get(media_type)
    if encoding is None:
        raise UnsupportedMediaType(
            f"Content-Type {content_type!r} is not supported: send OTLP/HTTP traces as {PROTOBUF} or {JSON}"
        )
    return encoding


def _too_large(max_bytes: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"request body is larger than the server's limit of {max_bytes} bytes once decompressed; send smaller batches"
    )


def _inflate(data: bytes, max_bytes: int, coding: Literal["gzip", "deflate"]) -> bytes:
    if coding == "gzip":
        wbits = 16 + zlib.MAX_WBITS
    elif len(data) >= 2 and data[0] & 0x0F == 8 and (data[0] << 8 | data[1]) % 31 == 0:
        wbits = zlib.MAX_WBITS  # zlib-wrapped, as RFC 9110 defines "deflate"
    else:
        wbits = -zlib.MAX_WBITS  # raw deflate, which some clients send instead
    out = bytearray()
    while True:
        decompressor = zlib.decompressobj(wbits)
        try:
            # max_length caps the output of this call; one byte over the limit is enough to refuse.
            out += decompressor.decompress(data, max_bytes - len(out) + 1)
            if len(out) > max_bytes:
                raise _too_large(max_bytes)
            out += decompressor.flush()
        except zlib.error as e:
            raise BadInput(f"{coding} request body is corrupt: {e}") from None
        if len(out) > max_bytes:
            raise _too_large(max_bytes)
        if not decompressor.eof:
            raise BadInput(f"{coding} request body is truncated")
        data = decompressor.unused_data
        if not data.strip(b"\x00"):  # like gzip(1), ignore trailing zero padding
            return bytes(out)
        if coding != "gzip":
            raise BadInput("deflate request body has data after the end of the compressed stream")
        # gzip allows several members back to back: decode the next one.


def _finish(raw: dict[str, Any], index: int, name: str) -> SpanIn:
    """Attribute a decoded span to its rollout/attempt and validate it as a :class:`SpanIn`."""
    attributes, resource = raw["attributes"], raw["resource"]
    rollout_id = attributes.get(ROLLOUT_ID)
    if rollout_id is None:
        rollout_id = resource.get(ROLLOUT_ID)
    attempt_id = attributes.get(ATTEMPT_ID)
    if attempt_id is None:
        attempt_id = resource.get(ATTEMPT_ID)
    where = f"span {index} ({name!r})"
    if rollout_id is None:
        if attempt_id is not None:
            raise BadInput(
                f"{where} has {ATTEMPT_ID} but no {ROLLOUT_ID}: set {ROLLOUT_ID} on the span or on its resource too"
            )
        raise BadInput(
            f"{where} has no {ROLLOUT_ID}: set the attribute {ROLLOUT_ID!r} on the span or on its "
            "resource (agentbolt's client does this for you)"
        )
    for key, value in ((ROLLOUT_ID, rollout_id), (ATTEMPT_ID, attempt_id)):
        if value is not None and (not isinstance(value, str) or not value):
            raise BadInput(f"{where}: {key} must be a non-empty string, got {value!r}")
    raw["rollout_id"] = rollout_id
    raw["attempt_id"] = attempt_id
    try:
        return SpanIn.model_validate(raw)
    except ValidationError as e:
        problems = [
            f"{'.'.join(str(part) for part in error['loc']) or 'span'}: {error['msg']}"
            for error in e.errors(include_url=False)[:5]
        ]
        raise BadInput(f"{where} is invalid: {'; '.join(problems)}") from None


# ---------------------------------------------------------------------------------------------
# Protobuf


def _decode_protobuf(body: bytes) -> list[SpanIn]:
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
                        "trace_id": _pb_id(span.trace_id, "trace_id", _ZERO_TRACE_ID),
                        "span_id": _pb_id(span.span_id, "span_id", _ZERO_SPAN_ID),
                        "parent_id": _pb_parent_id(span.parent_span_id),
                        "name": name,
                        "kind": _enum_name(span.kind, _KINDS, "kind"),
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
                                "trace_id": _pb_id(link.trace_id, f"links[{i}].trace_id", _ZERO_TRACE_ID),
                                "span_id": _pb_id(link.span_id, f"links[{i}].span_id", _ZERO_SPAN_ID),
                                "attributes": _pb_attributes(link.attributes),
                            }
                            for i, link in enumerate(span.links)
                        ],
                        "status": {
                            "code": _enum_name(span.status.code, _STATUS_CODES, "status.code"),
                            "message": span.status.message,
                        },
                        "resource": resource,
                        "scope": scope,
                    }
                except BadInput as e:
                    raise BadInput(f"span {index} ({name!r}): {e}") from None
                spans.append(_finish(raw, index, name))
    return spans


def _pb_id(raw: bytes, field: str, zero: bytes) -> str:
    if len(raw) != len(zero):
        raise BadInput(f"{field} must be {len(zero)} bytes, got {len(raw)}")
    if raw == zero:
        raise BadInput(f"{field} is all zeros, which OpenTelemetry defines as invalid")
    return raw.hex()


def _pb_parent_id(raw: bytes) -> str | None:
    if not raw or raw == _ZERO_SPAN_ID:
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


# ---------------------------------------------------------------------------------------------
# JSON
#
# Helpers take the JSON path of the value they read and raise BadInput naming it.


def _decode_json(body: bytes) -> list[SpanIn]:
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise BadInput(f"request body is not valid JSON: {e}") from None
    if not isinstance(document, dict):
        raise BadInput(f"OTLP/JSON request must be an object with 'resourceSpans', got {type(document).__name__}")
    spans: list[SpanIn] = []
    for r, resource_spans in enumerate(_list(_get(document, "resourceSpans", "resource_spans"), "resourceSpans")):
        r_path = f"resourceSpans[{r}]"
        resource_spans = _object(resource_spans, r_path)
        resource_obj = _object(resource_spans.get("resource"), f"{r_path}.resource")
        resource = _json_attributes(resource_obj.get("attributes"), f"{r_path}.resource.attributes")
        scope_list = _list(_get(resource_spans, "scopeSpans", "scope_spans"), f"{r_path}.scopeSpans")
        for s, scope_spans in enumerate(scope_list):
            s_path = f"{r_path}.scopeSpans[{s}]"
            scope_spans = _object(scope_spans, s_path)
            scope_obj = _object(scope_spans.get("scope"), f"{s_path}.scope")
            scope = _string(scope_obj.get("name"), f"{s_path}.scope.name") or None
            for k, span in enumerate(_list(scope_spans.get("spans"), f"{s_path}.spans")):
                path = f"{s_path}.spans[{k}]"
                span = _object(span, path)
                index, name = len(spans), _string(span.get("name"), f"{path}.name")
                try:
                    raw = _json_span(span, path)
                except BadInput as e:
                    raise BadInput(f"span {index} ({name!r}): {e}") from None
                raw["name"], raw["resource"], raw["scope"] = name, resource, scope
                spans.append(_finish(raw, index, name))
    return spans


def _json_span(span: dict[str, Any], path: str) -> dict[str, Any]:
    status = _object(span.get("status"), f"{path}.status")
    return {
        "trace_id": _json_id(_get(span, "traceId", "trace_id"), f"{path}.traceId", 16),
        "span_id": _json_id(_get(span, "spanId", "span_id"), f"{path}.spanId", 8),
        "parent_id": _json_parent_id(_get(span, "parentSpanId", "parent_span_id"), f"{path}.parentSpanId"),
        "kind": _KINDS[_json_enum(span.get("kind"), _KIND_NAMES, f"{path}.kind")],
        "start_time_ns": _json_int(
            _get(span, "startTimeUnixNano", "start_time_unix_nano"),
            f"{path}.startTimeUnixNano",
            0,
            _UINT64_MAX,
        ),
        "end_time_ns": _json_int(
            _get(span, "endTimeUnixNano", "end_time_unix_nano"), f"{path}.endTimeUnixNano", 0, _UINT64_MAX
        ),
        "attributes": _json_attributes(span.get("attributes"), f"{path}.attributes"),
        "events": [
            _json_event(event, f"{path}.events[{i}]")
            for i, event in enumerate(_list(span.get("events"), f"{path}.events"))
        ],
        "links": [
            _json_link(link, f"{path}.links[{i}]") for i, link in enumerate(_list(span.get("links"), f"{path}.links"))
        ],
        "status": {
            "code": _STATUS_CODES[_json_enum(status.get("code"), _STATUS_NAMES, f"{path}.status.code")],
            "message": _string(status.get("message"), f"{path}.status.message"),
        },
    }


def _json_event(event: Any, path: str) -> dict[str, Any]:
    event = _object(event, path)
    return {
        "name": _string(event.get("name"), f"{path}.name"),
        "time_ns": _json_int(_get(event, "timeUnixNano", "time_unix_nano"), f"{path}.timeUnixNano", 0, _UINT64_MAX),
        "attributes": _json_attributes(event.get("attributes"), f"{path}.attributes"),
    }


def _json_link(link: Any, path: str) -> dict[str, Any]:
    link = _object(link, path)
    return {
        "trace_id": _json_id(_get(link, "traceId", "trace_id"), f"{path}.traceId", 16),
        "span_id": _json_id(_get(link, "spanId", "span_id"), f"{path}.spanId", 8),
        "attributes": _json_attributes(link.get("attributes"), f"{path}.attributes"),
    }


def _get(obj: dict[str, Any], camel: str, snake: str) -> Any:
    """A field by its lowerCamelCase name, else by its original snake_case name."""
    value = obj.get(camel)
    return obj.get(snake) if value is None else value


def _object(value: Any, path: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadInput(f"{path} must be a JSON object, got {type(value).__name__}")
    return value


def _list(value: Any, path: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise BadInput(f"{path} must be a JSON array, got {type(value).__name__}")
    return value


def _string(value: Any, path: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise BadInput(f"{path} must be a string, got {type(value).__name__}")
    return value


def _json_int(value: Any, path: str, low: int, high: int) -> int:
    """A 64-bit integer, which protobuf JSON writes as a decimal string but may also be a number."""
    if value is None:
        return 0
    if isinstance(value, str) and _INT.fullmatch(value):
        number = int(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    else:
        raise BadInput(f"{path} must be an integer (a number or a decimal string), got {value!r}")
    if not low <= number <= high:
        raise BadInput(f"{path} is out of range [{low}, {high}]: {number}")
    return number


def _json_double(value: Any, path: str) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):  # "NaN", "Infinity", "-Infinity", or a number in a string
        try:
            return float(value)
        except ValueError:
            pass
    raise BadInput(f"{path} must be a number, got {value!r}")


def _json_enum(value: Any, names: dict[str, int], path: str) -> int:
    if value is None:
        return 0
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(names):
        return value
    if isinstance(value, str) and value in names:
        return names[value]
    raise BadInput(f"{path} must be one of 0-{len(names) - 1} (or {', '.join(names)}), got {value!r}")


def _json_id(value: Any, path: str, size: int) -> str:
    if not isinstance(value, str) or len(value) != 2 * size or not _HEX.fullmatch(value):
        shown = value if not isinstance(value, str) or len(value) <= 80 else value[:80] + "..."
        raise BadInput(
            f"{path} must be {2 * size} hex characters ({size} bytes; OTLP/JSON ids are hex, not base64), got {shown!r}"
        )
    hex_id = value.lower()
    if hex_id.count("0") == len(hex_id):
        raise BadInput(f"{path} is all zeros, which OpenTelemetry defines as invalid")
    return hex_id


def _json_parent_id(value: Any, path: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) != 16 or not _HEX.fullmatch(value):
        raise BadInput(f"{path} must be 16 hex characters or empty, got {value!r}")
    return None if value == "0000000000000000" else value.lower()


def _json_attributes(value: Any, path: str, depth: int = 0) -> dict[str, Any]:
    attributes: dict[str, Any] = {}
    for i, item in enumerate(_list(value, path)):
        if not isinstance(item, dict):
            raise BadInput(f"{path}[{i}] must be a {{'key': ..., 'value': ...}} object, got {type(item).__name__}")
        key = _string(item.get("key"), f"{path}[{i}].key")
        attributes[key] = _json_value(item.get("value"), f"{path}[{i}].value", depth)
    return attributes


_VALUE_FIELDS = {
    "stringValue": "string",
    "string_value": "string",
    "boolValue": "bool",
    "bool_value": "bool",
    "intValue": "int",
    "int_value": "int",
    "doubleValue": "double",
    "double_value": "double",
    "arrayValue": "array",
    "array_value": "array",
    "kvlistValue": "kvlist",
    "kvlist_value": "kvlist",
    "bytesValue": "bytes",
    "bytes_value": "bytes",
}


def _json_value(value: Any, path: str, depth: int) -> Any:
    """An AnyValue: an object with at most one of the ``*Value`` fields."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise BadInput(f"{path} must be an AnyValue object such as {{'stringValue': ...}}, got {value!r}")
    kind, inner = None, None
    for field, item in value.items():
        field_kind = _VALUE_FIELDS.get(field)
        if field_kind is None or item is None:
            continue  # unknown fields are ignored, as OTLP/JSON requires
        if kind is not None:
            raise BadInput(f"{path} sets more than one of its value fields ({', '.join(value)})")
        kind, inner = field_kind, item
    if kind is None:
        return None
    if kind == "string":
        return _string(inner, f"{path}.stringValue")
    if kind == "int":
        return _json_int(inner, f"{path}.intValue", _INT64_MIN, _INT64_MAX)
    if kind == "bool":
        if not isinstance(inner, bool):
            raise BadInput(f"{path}.boolValue must be true or false, got {inner!r}")
        return inner
    if kind == "double":
        return _json_double(inner, f"{path}.doubleValue")
    if kind == "bytes":
        return _json_bytes(inner, f"{path}.bytesValue")
    if depth >= _MAX_VALUE_DEPTH:
        raise BadInput(f"{path} nests arrays/kvlists deeper than {_MAX_VALUE_DEPTH} levels")
    if kind == "array":
        items_path = f"{path}.arrayValue.values"
        items = _list(_object(inner, f"{path}.arrayValue").get("values"), items_path)
        return [_json_value(item, f"{items_path}[{i}]", depth + 1) for i, item in enumerate(items)]
    kvlist_path = f"{path}.kvlistValue"
    return _json_attributes(_object(inner, kvlist_path).get("values"), f"{kvlist_path}.values", depth + 1)


def _json_bytes(value: Any, path: str) -> str:
    """Protobuf JSON bytes (base64, standard or URL-safe, padding optional) → standard base64."""
    if isinstance(value, str):
        text = value.replace("-", "+").replace("_", "/")
        try:
            decoded = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
        except (binascii.Error, ValueError):
            pass
        else:
            return base64.b64encode(decoded).decode("ascii")
    raise BadInput(f"{path} must be a base64 string, got {value!r}")
