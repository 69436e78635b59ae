"""OTLP/HTTP trace ingest: ``POST /v1/traces`` (protobuf or JSON, optionally gzip-compressed).

Errors follow the OTLP spec: a 4xx whose body is a ``google.rpc.Status`` in the request's encoding
(JSON requests and unreadable content types get JSON). A request is stored whole or not at all, except
for NaN/Infinity values, dropped and reported in ``partial_success`` (:func:`~agentbolt.server.otlp.drop_non_finite`).
"""

from __future__ import annotations

import json

from fastapi import APIRouter, Request, Response
from google.rpc import status_pb2

from agentbolt.errors import AgentboltError, UnsupportedMediaType, error_body_of
from agentbolt.server.otlp import (
    decode_trace_request,
    decompress,
    drop_non_finite,
    encode_trace_response,
    is_protobuf,
)
from agentbolt.store import Store

router = APIRouter(tags=["traces"])

_PROTOBUF = "application/x-protobuf"
# google.rpc.Code values for the Status body.
_RPC_CODE = {400: 3, 404: 5, 409: 9, 413: 8, 415: 3}


def _status_response(exc: AgentboltError, content_type: str) -> Response:
    code = _RPC_CODE.get(exc.http_status, 13)
    if is_protobuf(content_type) and not isinstance(exc, UnsupportedMediaType):
        body = status_pb2.Status(code=code, message=str(exc)).SerializeToString()
        return Response(body, status_code=exc.http_status, media_type=_PROTOBUF)
    payload = {"code": code, "message": str(exc), **error_body_of(exc)}  # google.rpc.Status, plus agentbolt's error
    return Response(json.dumps(payload), status_code=exc.http_status, media_type="application/json")


_BINARY = {"schema": {"type": "string", "format": "binary"}}
# The JSON error body is agentbolt.types.TraceExportError (create_app puts its schema in the components).
_STATUS = {"application/json": {"schema": {"$ref": "#/components/schemas/TraceExportError"}}, _PROTOBUF: _BINARY}


def _error(description: str, protobuf: bool = True) -> dict[str, object]:
    content = _STATUS if protobuf else {"application/json": _STATUS["application/json"]}
    return {"description": description + " A google.rpc.Status in the request's encoding.", "content": content}


@router.post(
    "/v1/traces",
    response_class=Response,
    responses={
        200: {
            "description": "ExportTraceServiceResponse, in the request's encoding; partial_success names any "
            "NaN/Infinity value dropped.",
            "content": {_PROTOBUF: _BINARY, "application/json": {"schema": {"type": "object"}}},
        },
        400: _error("Malformed payload, bad ids, or a span without agentbolt.rollout_id."),
        404: _error("A span names a rollout or attempt that does not exist."),
        413: _error("Body (or its decompressed size) over the limit."),
        415: _error("Content-Type is neither application/x-protobuf nor application/json.", protobuf=False),
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "description": "An OTLP ExportTraceServiceRequest; without a Content-Type it is read as protobuf.",
            "content": {_PROTOBUF: _BINARY, "application/json": {"schema": {"type": "object"}}},
        }
    },
)
async def export_traces(request: Request) -> Response:
    """Store spans sent by any OTLP/HTTP exporter.

    Each span must carry ``agentbolt.rollout_id`` (and normally ``agentbolt.attempt_id``) as a
    span or resource attribute; the agentbolt client sets both for every span inside an attempt.
    """
    content_type = request.headers.get("content-type", "")
    try:
        raw = await request.body()
        body = decompress(raw, request.headers.get("content-encoding"), request.app.state.config.max_body_bytes)
        screened = drop_non_finite(decode_trace_request(body, content_type))
        store: Store = request.app.state.store
        if screened.spans:
            await store.add_spans(screened.spans)
    except AgentboltError as exc:
        return _status_response(exc, content_type)
    payload, media_type = encode_trace_response(content_type, screened.rejected_spans, screened.message())
    return Response(payload, media_type=media_type)
