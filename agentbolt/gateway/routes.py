"""The gateway's OpenAI-compatible HTTP routes, plain and per attempt (its reports are in reports.py).

``/v1/chat/completions``, ``/v1/completions``, ``/v1/models`` answer at the root and under
``/rollouts/{rollout_id}/attempts/{attempt_id}/v1/...``, so an agent is attributed by its base URL.
Errors are OpenAI's ``{"error": {"message", "type", "param", "code"}}`` (:func:`agentbolt.errors.error_body`):
400 invalid or unsupported input (``param`` names the field), 403 no attempt named while the server requires
one, 404 unknown model (``model_not_found``), rollout or attempt, 409 finished attempt or (strict mode)
token-fidelity mismatch, 502/503 the backend failed. A refused call generates nothing and stores nothing.

With ``answer`` span durability (``ServerConfig.span_durability``) a call's answer, or a stream's chunks
after the first, go out once its spans are stored: ``Gateway.generate`` returns only then.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from agentbolt.errors import AgentboltError, error_body_of
from agentbolt.gateway.attribution import call_context
from agentbolt.gateway.call import Prepared, Served
from agentbolt.gateway.errors import GatewayError, error_response
from agentbolt.gateway.gateway import Gateway, gateway_of
from agentbolt.gateway.responses import sse
from agentbolt.gateway.serving_chat import chat_completion, chat_role_chunks, chat_stream_body, prepare_chat
from agentbolt.gateway.serving_completion import completion, completion_stream_body, prepare_completion
from agentbolt.gateway.validation import parse_json
from agentbolt.types import (
    ChatCompletion,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
    ModelCard,
    ModelList,
)
from agentbolt.types.openai import ErrorResponse

logger = logging.getLogger(__name__)
router = APIRouter(tags=["gateway"])
ATTEMPT_PREFIX = "/rollouts/{rollout_id}/attempts/{attempt_id}"

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "Invalid or unsupported input; `param` names the field."},
    403: {"model": ErrorResponse, "description": "The server requires calls to name a rollout attempt."},
    404: {"model": ErrorResponse, "description": "Unknown model, rollout or attempt."},
    409: {
        "model": ErrorResponse,
        "description": "The attempt has finished, or (strict mode) a token-fidelity mismatch.",
    },
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


async def _json_body(request: Request) -> Any:
    return parse_json(await request.body())


async def _serve(request: Request, rollout_id: str | None, attempt_id: str | None, chat: bool) -> Response:
    gateway = gateway_of(request)
    try:
        context = call_context(rollout_id, attempt_id, request.headers)
        body = await _json_body(request)
        if chat:
            call = await prepare_chat(gateway, body, context)
        else:
            call = await prepare_completion(gateway, body, context)
    except AgentboltError as exc:
        gateway.refused += 1
        return error_response(exc)
    except Exception as exc:
        return error_response(_unexpected(exc))
    if call.stream:
        return StreamingResponse(_stream(gateway, call, chat), media_type="text/event-stream")
    try:
        choices = await gateway.generate(call)
    except AgentboltError as exc:
        return error_response(exc)
    except Exception as exc:  # a bug behind the gateway: this call gets a JSON 500, the others go on
        return error_response(_unexpected(exc))
    model = call.served.backend.model_name
    response_body = chat_completion if chat else completion
    return Response(response_body(call, choices, model, call.served.text), media_type="application/json")


async def _stream(gateway: Gateway, call: Prepared, chat: bool) -> AsyncIterator[bytes]:
    model = call.served.backend.model_name
    if chat:
        yield chat_role_chunks(call, model)
    try:
        choices = await gateway.generate(call)
    except AgentboltError as exc:
        yield sse(error_body_of(exc))
        return
    except Exception as exc:
        yield sse(error_body_of(_unexpected(exc)))
        return
    body = chat_stream_body if chat else completion_stream_body
    for event in body(call, choices, model, call.served.text):
        yield event


def _unexpected(exc: Exception) -> AgentboltError:
    """A JSON 500 for an exception no stage expected (logged with its traceback)."""
    logger.error("a gateway call failed unexpectedly", exc_info=exc)
    return GatewayError(f"the call failed: {type(exc).__name__}: {exc}", status=500, code="internal_error")


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
    gateway = gateway_of(request)
    return ModelList(data=[_model_card(gateway, served) for served in gateway.models.values()])


@router.get("/v1/models/{model}", response_model=ModelCard)
@router.get(ATTEMPT_PREFIX + "/v1/models/{model}", response_model=ModelCard, include_in_schema=False)
async def get_model(request: Request, model: str) -> ModelCard:
    """One model by name (404 unless it is served here)."""
    gateway = gateway_of(request)
    served = gateway.models.get(model)
    if served is None:
        raise GatewayError(f"model {model!r} is not served here", status=404, code="model_not_found", param="model")
    return _model_card(gateway, served)
