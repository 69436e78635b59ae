"""Decode OTLP/HTTP trace export requests (``POST /v1/traces``) into :class:`~agentbolt.types.SpanIn`.

Pure functions, no web framework: the route reads the body, calls :func:`decompress` for any
``Content-Encoding``, :func:`decode_trace_request` to get the spans, and answers with
:func:`encode_trace_response`. The two decoders live beside this module: ``otlp_protobuf.py`` and
``otlp_json.py``; ``otlp_spans.py`` holds what they share (enum names, zero ids, attribution).

Mapping rules (public: users' own OpenTelemetry setups rely on them)
--------------------------------------------------------------------

Encodings
    ``application/x-protobuf`` (also ``application/protobuf``): an ``ExportTraceServiceRequest``.
    ``application/json``: OTLP/JSON, the protobuf JSON mapping with OTLP's exceptions: trace and
    span ids are hex strings (any case), not base64; enums are integers (enum names such as
    ``"SPAN_KIND_SERVER"`` are accepted too); 64-bit integers may be strings or numbers; field
    names are lowerCamelCase and the original snake_case names are accepted too; unknown fields
    are ignored; ``null`` means "not set". Media-type parameters (``; charset=utf-8``) are ignored.
    A request without a ``Content-Type`` is read as protobuf, OTLP/HTTP's default encoding.
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

Non-finite numbers
    A double that is NaN or ±Infinity (protobuf allows them; so do OTLP/JSON's ``"NaN"`` strings) has no
    JSON form, so it cannot be stored. :func:`drop_non_finite` drops the attribute that holds one (the
    top-level key, on the span, its resource, events or links) and keeps the rest of the span; a reward
    span whose ``agentbolt.reward.value`` is not finite is no reward, so that span is rejected whole.
    The 200 reports both in ``partial_success``: ``rejected_spans`` counts the rejected spans and
    ``error_message`` names every dropped attribute, so nothing is dropped silently.

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

import json
import math
import zlib
from dataclasses import dataclass, field
from typing import Any, Literal

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from agentbolt.errors import BadInput, PayloadTooLarge, UnsupportedMediaType
from agentbolt.semconv import REWARD_VALUE
from agentbolt.server.otlp_json import decode_json
from agentbolt.server.otlp_protobuf import decode_protobuf
from agentbolt.types import SpanIn, non_finite_path

__all__ = [
    "JSON",
    "PROTOBUF",
    "Screened",
    "decode_trace_request",
    "decompress",
    "drop_non_finite",
    "encode_trace_response",
    "is_protobuf",
]

PROTOBUF = "application/x-protobuf"
JSON = "application/json"

_Encoding = Literal["protobuf", "json"]
_MEDIA_TYPES: dict[str, _Encoding] = {
    "": "protobuf",  # no Content-Type: OTLP/HTTP's default encoding
    "application/x-protobuf": "protobuf",
    "application/protobuf": "protobuf",
    "application/json": "json",
}


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
        return decode_protobuf(body)
    return decode_json(body)


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


def is_protobuf(content_type: str) -> bool:
    """Whether a request of this ``Content-Type`` is answered in protobuf (no Content-Type counts as protobuf)."""
    return _MEDIA_TYPES.get(content_type.split(";", 1)[0].strip().lower()) == "protobuf"


@dataclass
class Screened:
    """What :func:`drop_non_finite` kept, and what it dropped, for the response's ``partial_success``."""

    spans: list[SpanIn]
    rejected_spans: int = 0
    dropped: list[str] = field(default_factory=list)  # "span 0 ('name'): attributes['key']", one a problem

    def message(self) -> str:
        if not self.dropped:
            return ""
        shown = "; ".join(self.dropped[:20]) + ("; ..." if len(self.dropped) > 20 else "")
        return (
            f"{len(self.dropped)} value(s) were NaN or Infinity, which cannot be stored (spans rejected: "
            f"{self.rejected_spans}; otherwise the attribute was dropped and the span kept): {shown}"
        )


def _non_finite(value: Any) -> bool:
    """Whether an attribute value is or holds NaN/±Infinity (strings and integers, most values, cost one check)."""
    if isinstance(value, float):
        return not math.isfinite(value)
    return isinstance(value, (list, dict)) and non_finite_path(value) is not None


def drop_non_finite(spans: list[SpanIn]) -> Screened:
    """Drop the attributes that hold NaN/±Infinity, and reward spans whose reward value is not finite.

    The rules are in this module's docstring (*Non-finite numbers*); every drop is named in the result.
    """
    screened = Screened(spans=[])
    for index, span in enumerate(spans):
        where = f"span {index} ({span.name!r})"
        if _non_finite(span.attributes.get(REWARD_VALUE)):
            screened.rejected_spans += 1
            screened.dropped.append(f"{where}: attributes[{REWARD_VALUE!r}] (the reward span was rejected)")
            continue
        bags = [("attributes", span.attributes), ("resource", span.resource)]
        bags += [(f"events[{i}].attributes", event.attributes) for i, event in enumerate(span.events)]
        bags += [(f"links[{i}].attributes", link.attributes) for i, link in enumerate(span.links)]
        for name, bag in bags:
            for key in [key for key, value in bag.items() if _non_finite(value)]:
                del bag[key]
                screened.dropped.append(f"{where}: {name}[{key!r}]")
        screened.spans.append(span)
    return screened


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
