"""Exceptions with messages that tell the user what to do next, and the one JSON error body.

Each exception carries the HTTP status the server answers with, so routes never guess, and a ``code``:
the specific reason (``not_found``, ``model_not_found``, ``attempt_finished``...). :func:`error_body` is
the shape every agentbolt route answers an error with, the gateway's and the ``/api`` server's alike.
"""

from __future__ import annotations

from typing import Any


class AgentboltError(Exception):
    """Base of every agentbolt error."""

    http_status = 500
    code = "internal_error"
    param: str | None = None  # the request field at fault, when one is


class BadInput(AgentboltError):
    """Input from outside (HTTP body, OTLP payload, config, dataset row) is invalid."""

    http_status = 400
    code = "bad_request"


class NotFound(AgentboltError):
    """A rollout, attempt or other record with that id does not exist."""

    http_status = 404
    code = "not_found"


class IllegalTransition(AgentboltError):
    """A status change the lifecycle state machine does not allow (e.g. completing a finished attempt)."""

    http_status = 409
    code = "illegal_transition"


class Conflict(AgentboltError):
    """The request clashes with stored state (e.g. a rollout id that already exists)."""

    http_status = 409
    code = "conflict"


class StoreUnavailable(AgentboltError):
    """The database cannot be reached or its schema is of an unknown version."""

    http_status = 503
    code = "store_unavailable"


class Unauthorized(AgentboltError):
    """The server wants an API key and the request had none, or the wrong one."""

    http_status = 401
    code = "unauthorized"


class ServerUnreachable(AgentboltError):
    """The client cannot reach the agentbolt server (not running, wrong URL, network down)."""

    http_status = 503
    code = "server_unreachable"


class UnsupportedMediaType(BadInput):
    """The request body's Content-Type or Content-Encoding is not one the endpoint reads."""

    http_status = 415
    code = "unsupported_media_type"


class PayloadTooLarge(BadInput):
    """The request body (after decompression) is larger than the server accepts."""

    http_status = 413
    code = "payload_too_large"


# --- the error body --------------------------------------------------------------------------------

INVALID_REQUEST_ERROR = "invalid_request_error"
SERVER_ERROR = "server_error"


def error_type(status: int) -> str:
    """OpenAI's error ``type`` for an error answered with HTTP ``status``.

    ``type`` is a category, as OpenAI sends it: ``invalid_request_error`` when the request is at fault
    (OpenAI sends it with its 400s, 401s and 404s alike) and ``server_error`` when the server or an engine
    behind it failed. The specific reason is the ``code``.
    """
    return SERVER_ERROR if status >= 500 else INVALID_REQUEST_ERROR


def error_body(status: int, message: str, code: str | None, param: str | None = None) -> dict[str, Any]:
    """The JSON body of an error response: OpenAI's shape, so one client parses every agentbolt route.

    Args:
        status: the HTTP status of the response; it decides ``type`` (:func:`error_type`).
        message: what is wrong and what to do about it.
        code: the specific reason (``model_not_found``, ``attempt_finished``, ``not_found``...).
        param: the request field at fault, if one is (``messages.0.role``, ``max_tokens``...).
    """
    return {"error": {"message": message, "type": error_type(status), "param": param, "code": code}}


def error_body_of(exc: AgentboltError) -> dict[str, Any]:
    """:func:`error_body` of an exception: its status, message, code and param."""
    return error_body(exc.http_status, str(exc), exc.code, exc.param)
