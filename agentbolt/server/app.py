"""Build the Lightning Server's ASGI app: store lifecycle, watchdog, error handling, guards, routes.

Every error is answered with :func:`agentbolt.errors.error_body`, the gateway's shape; field validation
follows the gateway's rule too (see :func:`_validation_error`), and the OpenAPI document says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp

from agentbolt import __version__
from agentbolt.errors import AgentboltError, BadInput, error_body, error_body_of
from agentbolt.gateway.backend import Backend, backend_from_config
from agentbolt.gateway.gateway import Gateway
from agentbolt.gateway.reports import router as gateway_reports_router
from agentbolt.gateway.routes import openapi_schemas
from agentbolt.gateway.routes import router as gateway_router
from agentbolt.server.guards import OPEN_PATHS, ApiKeyGuard, BodyLimitGuard
from agentbolt.server.queue import AttemptFinishHook, QueueSignals
from agentbolt.server.queue import router as queue_router
from agentbolt.server.traces import router as traces_router
from agentbolt.store import SCHEMA_VERSION, Store
from agentbolt.types import Health, ServerConfig, TraceExportError
from agentbolt.types.openai import ErrorResponse

log = logging.getLogger(__name__)


async def _watchdog(store: Store, signals: QueueSignals, interval_s: float) -> None:
    """End attempts past their timeout or heartbeat timeout; requeued rollouts wake waiting workers."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            ended = await store.expire_attempts()
        except Exception:  # the sweep must survive a transient database error
            log.exception("watchdog sweep failed; retrying in %.1fs", interval_s)
            continue
        if ended:
            log.info("watchdog ended %d attempt(s): %s", len(ended), ", ".join(a.attempt_id for a in ended))
            signals.wake()


def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's request validation, answered as the gateway answers it.

    The rule: a request whose fields fail validation is answered 400 with ``param`` naming the offending
    field, on the ``/api`` routes as on the gateway (OpenAI's behaviour), never 422.
    """
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":
        ctx = first.get("ctx") or {}
        message = f"request body is not valid JSON: {ctx.get('error', 'parse error')}"
        return JSONResponse(error_body(400, message, "invalid_json"), status_code=400)
    parts = []
    for err in errors[:10]:
        where = _field(err.get("loc", ())) or "body"
        parts.append(f"{where}: {err.get('msg')}")
    message = "invalid request: " + "; ".join(parts)
    return JSONResponse(error_body(400, message, "invalid_value", _field(first.get("loc", ()))), status_code=400)


def _field(loc: Sequence[Any]) -> str | None:
    """The dotted path of a validation error's location, without the ``body`` prefix."""
    return ".".join(str(p) for p in loc if p != "body") or None


def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_request")
    body = error_body(exc.status_code, str(exc.detail), code)
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


def _agentbolt_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AgentboltError)
    return JSONResponse(error_body_of(exc), status_code=exc.http_status)


def create_app(
    config: ServerConfig,
    store: Store | None = None,
    backend: Backend | None = None,
    fixed: Sequence[Backend] = (),
) -> ASGIApp:
    """The server's ASGI app. Opens ``store`` (or one built from ``config.store_url``) on start-up.

    With a ``backend`` (the policy) the app also serves the OpenAI-compatible gateway
    (``/v1/chat/completions``...) and records its calls as spans; shutting down writes every pending span.
    ``fixed`` models are served beside it under their own names (see :class:`~agentbolt.gateway.gateway.Gateway`).
    The backends stay the caller's to close.

    The returned app is the FastAPI app wrapped in the size and API-key guards; the FastAPI app
    itself is reachable as ``app.fastapi`` for tests and OpenAPI export.
    """
    store = store or Store(config.store_url)
    signals = QueueSignals()
    if fixed and backend is None:
        raise BadInput("fixed models are served by the gateway, which needs the policy model too")
    gateway = Gateway(backend, store, config, fixed) if backend is not None else None

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await store.open()
        watchdog = asyncio.create_task(_watchdog(store, signals, config.watchdog_interval_s))
        if gateway is not None:
            gateway.start()
        try:
            yield
        finally:
            watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watchdog
            if gateway is not None:
                await gateway.aclose()  # pending LLM-call spans are written before the store closes
            await store.close()

    api = FastAPI(
        title="agentbolt Lightning Server",
        version=__version__,
        description=(
            "Rollout queue, OTLP/HTTP trace ingest and model-version records for agentbolt. "
            'Errors are JSON: {"error": {"message", "type", "param", "code"}}; '
            "a field that fails validation is a 400 whose param names it."
        ),
        lifespan=lifespan,
    )
    finish_hooks: list[AttemptFinishHook] = []
    if gateway is not None:
        finish_hooks.append(gateway)
    api.state.store = store
    api.state.signals = signals
    api.state.config = config
    api.state.attempt_finish_hooks = finish_hooks
    api.state.gateway = gateway  # the gateway's own routes read it (agentbolt.gateway.gateway.gateway_of)
    api.add_exception_handler(RequestValidationError, _validation_error)
    api.add_exception_handler(AgentboltError, _agentbolt_error)
    api.add_exception_handler(StarletteHTTPException, _http_error)

    @api.get("/health", response_model=Health, tags=["server"])
    async def health() -> Health:
        """Liveness: answers without an API key."""
        return Health(version=__version__, store=store.backend, schema_version=SCHEMA_VERSION)

    _add_routes(api, traces_router)  # first: routes are tried in order, and this is the busiest one
    _add_routes(api, queue_router)
    schemas = {**_schemas(ErrorResponse), **_schemas(TraceExportError)}
    if gateway is not None:
        _add_routes(api, gateway_router)
        _add_routes(api, gateway_reports_router)
        schemas.update(openapi_schemas())
    _customise_openapi(api, schemas, keyed=bool(config.api_key))

    guarded: Any = BodyLimitGuard(api, config.max_body_bytes)
    if config.api_key:
        guarded = ApiKeyGuard(guarded, config.api_key)
    guarded.fastapi = api
    return guarded


def _add_routes(api: FastAPI, router: APIRouter) -> None:
    """Put ``router``'s routes on ``api`` itself, in order, instead of ``api.include_router(router)``.

    FastAPI 0.16x keeps an included router as one nested route whose routes are matched (twice) on every
    request: that cost ~30 µs a request, ~8% of the server's CPU per rollout with one rollout a request
    (``benchmarks/store_throughput.py --batch 1``). The OpenAPI document is the same. Our routers carry
    tags and a prefix only (both already in their routes); a router with its own dependencies, which
    include_router would apply, is refused.
    """
    if router.dependencies:
        raise TypeError("a router with dependencies of its own needs api.include_router")
    api.router.routes.extend(router.routes)


_ERROR_CONTENT = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
_VALIDATION_400 = {"description": "Invalid input; `param` names the field.", "content": _ERROR_CONTENT}
# What the guards and the path rule answer on any route (see _customise_openapi).
_GUARD_ERRORS = {
    "400": _VALIDATION_400,
    "413": {"description": "Request body over the server's limit (--max-body-bytes).", "content": _ERROR_CONTENT},
}
_UNKNOWN_ID_404 = {"description": "No record with the id in the path.", "content": _ERROR_CONTENT}
_UNAUTHORIZED_401 = {"description": "Missing or wrong API key.", "content": _ERROR_CONTENT}
_FASTAPI_VALIDATION_SCHEMAS = ("HTTPValidationError", "ValidationError")


def _schemas(model: type[BaseModel]) -> dict[str, Any]:
    """``model``'s JSON schema and those it refers to, for the OpenAPI components."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas: dict[str, Any] = schema.pop("$defs", {})
    schemas[model.__name__] = schema
    return schemas


def _customise_openapi(api: FastAPI, schemas: dict[str, Any], keyed: bool) -> None:
    """Put ``schemas`` into the OpenAPI components, and document the errors every route can answer.

    FastAPI documents a 422 on every route that validates its input; this app answers those with a 400
    (:func:`_validation_error`), so each 422 becomes a 400 (unless the route documents its own 400).
    The guards in front of every route answer 400 (an unreadable Content-Length), 413 (body too large) and,
    with ``keyed``, 401 (outside ``OPEN_PATHS``); a route with an id in its path answers 404 for an unknown id.
    A route's own description of a status wins.
    """
    default_openapi = api.openapi

    def openapi() -> dict[str, Any]:
        if api.openapi_schema is None:
            document = default_openapi()
            for path, operations in document.get("paths", {}).items():
                for operation in operations.values():
                    responses = operation.setdefault("responses", {})
                    responses.pop("422", None)
                    for status, response in _GUARD_ERRORS.items():
                        responses.setdefault(status, response)
                    if any(p.get("in") == "path" for p in operation.get("parameters", [])):
                        responses.setdefault("404", _UNKNOWN_ID_404)
                    if keyed and path not in OPEN_PATHS:
                        responses.setdefault("401", _UNAUTHORIZED_401)
            components = document.setdefault("components", {}).setdefault("schemas", {})
            for name in _FASTAPI_VALIDATION_SCHEMAS:
                components.pop(name, None)
            components.update(schemas)
            api.openapi_schema = document
        return api.openapi_schema

    api.openapi = openapi  # type: ignore[method-assign]


def app_from_env() -> ASGIApp:
    """App factory for multi-process serving: reads the ServerConfig the CLI put in the environment.

    Each process builds its own gateway backend from the config (upstream engines only: the CLI
    refuses an embedded engine with several processes).
    """
    import os

    config = ServerConfig.model_validate_json(os.environ["AGENTBOLT_SERVER_CONFIG"])
    return create_app(config, backend=backend_from_config(config))
