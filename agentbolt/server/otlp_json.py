"""Decode an OTLP/JSON ``ExportTraceServiceRequest`` (OTLP/HTTP ``application/json``).

The protobuf JSON mapping with OTLP's exceptions; the mapping rules are in the docstring of
:mod:`agentbolt.server.otlp`. Helpers take the JSON path of the value they read and raise BadInput naming it.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

from agentbolt.errors import BadInput
from agentbolt.server.otlp_spans import KIND_NAMES, KINDS, STATUS_CODES, STATUS_NAMES, attributed_span
from agentbolt.types import SpanIn

_HEX = re.compile(r"[0-9a-fA-F]*")
_INT = re.compile(r"-?[0-9]+")
_UINT64_MAX = 2**64 - 1
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_MAX_VALUE_DEPTH = 64  # nesting of arrays/kvlists in one attribute value (protobuf's own limit is ~45)


def decode_json(body: bytes) -> list[SpanIn]:
    """The spans of an OTLP/JSON ``ExportTraceServiceRequest``, in request order.

    Raises:
        BadInput: the body is not valid JSON or not shaped like OTLP, or a span breaks the rules (naming
            the span and the JSON path of the field).
    """
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
                spans.append(attributed_span(raw, index, name))
    return spans


def _json_span(span: dict[str, Any], path: str) -> dict[str, Any]:
    status = _object(span.get("status"), f"{path}.status")
    return {
        "trace_id": _json_id(_get(span, "traceId", "trace_id"), f"{path}.traceId", 16),
        "span_id": _json_id(_get(span, "spanId", "span_id"), f"{path}.spanId", 8),
        "parent_id": _json_parent_id(_get(span, "parentSpanId", "parent_span_id"), f"{path}.parentSpanId"),
        "kind": KINDS[_json_enum(span.get("kind"), KIND_NAMES, f"{path}.kind")],
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
            "code": STATUS_CODES[_json_enum(status.get("code"), STATUS_NAMES, f"{path}.status.code")],
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
