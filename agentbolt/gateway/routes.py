"""The gateway's HTTP routes: OpenAI-compatible endpoints, plain and per attempt, and its reports.

``/v1/chat/completions``, ``/v1/completions``, ``/v1/models`` answer at the root and under
``/rollouts/{rollout_id}/attempts/{attempt_id}/v1/...``, so an agent is attributed by its base URL.
Errors are OpenAI's ``{"error": {"message", "type", "param", "code"}}``: 400 invalid or unsupported
input (``param`` names the field), 403 no attempt named while the server requires one, 404 unknown model
(``model_not_found``), rollout or attempt, 409 finished attempt or (strict mode) token-fidelity mismatch,
502/503 the backend failed. A refused call generates nothing and stores nothing.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from agentbolt import semconv
from agentbolt.errors import AgentboltError
from agentbolt.gateway.attribution import call_context
from agentbolt.gateway.calls import Gateway, Prepared, Served
from agentbolt.gateway.errors import GatewayError, error_body, error_response
from agentbolt.gateway.responses import (
    chat_completion,
    chat_role_chunks,
    chat_stream_body,
    completion,
    completion_stream_body,
    sse,
)
from agentbolt.types import (
    ChatCompletion,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
    FidelityReport,
    GatewayStats,
    ModelCard,
    ModelList,
)

router = APIRouter(tags=["gateway"])
ATTEMPT_PREFIX = "/rollouts/{rollout_id}/attempts/{attempt_id}"

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "Invalid or unsupported input; `param` names the field."},
    403: {"description": "The server requires calls to name a rollout attempt."},
    404: {"description": "Unknown model, rollout or attempt."},
    409: {"description": "The attempt has finished, or (strict mode) a token-fidelity mismatch."},
}


def _body_schema(model: type) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}},
        }
    }


def openapi_schemas() -> dict[str, Any]:
    """JSON schemas of the request bodies (parsed by hand on the hot path), for the OpenAPI components."""
    schemas: dict[str, Any] = {}
    for model in (ChatCompletionRequest, CompletionRequest):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    return schemas


def _gateway(request: Request) -> Gateway:
    gateway: Gateway | None = getattr(request.app.state, "gateway", None)
    if gateway is None:
        raise GatewayError("this server runs no model: start it with agentbolt serve --model ...", status=404)
    return gateway


async def _json_body(request: Request) -> Any:
    raw = await request.body()
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise GatewayError(f"request body is not valid JSON: {exc}", code="invalid_json") from None


async def _serve(request: Request, rollout_id: str | None, attempt_id: str | None, chat: bool) -> Response:
    gateway = _gateway(request)
    try:
        context = call_context(rollout_id, attempt_id, request.headers)
        body = await _json_body(request)
        if chat:
            call = await gateway.prepare_chat(body, context)
        else:
            call = await gateway.prepare_completion(body, context)
    except AgentboltError as exc:
        gateway.refused += 1
        return error_response(exc)
    if call.stream:
        return StreamingResponse(_stream(gateway, call, chat), media_type="text/event-stream")
    try:
        choices = await gateway.generate(call)
    except AgentboltError as exc:
        return error_response(exc)
    model = call.served.backend.model_name
    build = chat_completion if chat else completion
    return Response(build(call, choices, model, call.served.text), media_type="application/json")


async def _stream(gateway: Gateway, call: Prepared, chat: bool) -> AsyncIterator[bytes]:
    model = call.served.backend.model_name
    if chat:
        yield chat_role_chunks(call, model)
    try:
        choices = await gateway.generate(call)
    except AgentboltError as exc:
        yield sse(error_body(str(exc), exc.code))
        return
    body = chat_stream_body if chat else completion_stream_body
    for event in body(call, choices, model, call.served.text):
        yield event


_CHAT = {
    "summary": "Create a chat completion (OpenAI-compatible)",
    "responses": {
        200: {"model": ChatCompletion, "description": "A chat.completion, or an SSE stream of chunks."},
        **_ERRORS,
    },
    "openapi_extra": _body_schema(ChatCompletionRequest),
}
_COMPLETION = {
    "summary": "Create a text completion (OpenAI-compatible)",
    "responses": {200: {"model": Completion, "description": "A text_completion, or an SSE stream."}, **_ERRORS},
    "openapi_extra": _body_schema(CompletionRequest),
}


@router.post("/v1/chat/completions", **_CHAT)  # type: ignore[arg-type]
async def chat_completions(request: Request) -> Response:
    """Chat completion; recorded as one span per choice, unattributed unless the attribution headers are sent."""
    return await _serve(request, None, None, chat=True)


@router.post(ATTEMPT_PREFIX + "/v1/chat/completions", **_CHAT)  # type: ignore[arg-type]
async def attempt_chat_completions(request: Request, rollout_id: str, attempt_id: str) -> Response:
    """Chat completion of one rollout attempt (the base URL an agent gets from its worker)."""
    return await _serve(request, rollout_id, attempt_id, chat=True)


@router.post("/v1/completions", **_COMPLETION)  # type: ignore[arg-type]
async def completions(request: Request) -> Response:
    """Text completion of one prompt (text or token ids)."""
    return await _serve(request, None, None, chat=False)


@router.post(ATTEMPT_PREFIX + "/v1/completions", **_COMPLETION)  # type: ignore[arg-type]
async def attempt_completions(request: Request, rollout_id: str, attempt_id: str) -> Response:
    """Text completion of one rollout attempt."""
    return await _serve(request, rollout_id, attempt_id, chat=False)


def _model_card(gateway: Gateway, served: Served) -> ModelCard:
    backend = served.backend
    return ModelCard(id=backend.model_name, created=gateway.started, max_model_len=backend.max_context)


@router.get("/v1/models", response_model=ModelList)
@router.get(ATTEMPT_PREFIX + "/v1/models", response_model=ModelList, include_in_schema=False)
async def list_models(request: Request) -> ModelList:
    """The models this gateway serves: the policy first, then any fixed models."""
    gateway = _gateway(request)
    return ModelList(data=[_model_card(gateway, served) for served in gateway.models.values()])


@router.get("/v1/models/{model}", response_model=ModelCard)
@router.get(ATTEMPT_PREFIX + "/v1/models/{model}", response_model=ModelCard, include_in_schema=False)
async def get_model(request: Request, model: str) -> ModelCard:
    """One model by name (404 unless it is served here)."""
    gateway = _gateway(request)
    served = gateway.models.get(model)
    if served is None:
        raise GatewayError(f"model {model!r} is not served here", status=404, code="model_not_found", param="model")
    return _model_card(gateway, served)


@router.get("/api/rollouts/{rollout_id}/fidelity", response_model=FidelityReport)
async def rollout_fidelity(request: Request, rollout_id: str) -> FidelityReport:
    """Token-fidelity checks of a rollout's LLM calls, counted from its stored spans (see gateway/fidelity.py)."""
    gateway = _gateway(request)
    await gateway.recorder.flush()
    checked, mismatched, offset = 0, [], 0
    while True:
        page = await gateway.store.query_spans(rollout_id, limit=1000, offset=offset)
        for span in page.items:
            flag = span.attributes.get(semconv.LLM_FIDELITY_MISMATCH)
            if flag is not None:
                checked += 1
                if flag:
                    mismatched.append(span.span_id)
        offset += len(page.items)
        if not page.items or offset >= page.total:
            break
    refused = gateway.fidelity_refused.get(rollout_id, 0)
    return FidelityReport(
        rollout_id=rollout_id,
        checked=checked + refused,
        mismatches=len(mismatched) + refused,
        refused=refused,
        mismatched_span_ids=mismatched,
    )


@router.get("/api/gateway/stats", response_model=GatewayStats)
async def gateway_stats(request: Request) -> GatewayStats:
    """This server process's gateway counters since it started."""
    gateway = _gateway(request)
    return GatewayStats(
        model=gateway.backend.model_name,
        model_version=gateway.backend.model_version,
        calls=gateway.calls,
        refused=gateway.refused,
        spans_recorded=gateway.recorder.recorded,
        spans_pending=gateway.recorder.pending,
        spans_dropped=gateway.recorder.dropped,
        fidelity_checked=gateway.fidelity.checked,
        fidelity_mismatches=gateway.fidelity.mismatches,
    )
