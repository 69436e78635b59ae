"""Exceptions with messages that tell the user what to do next.

Each carries the HTTP status the server answers with, so routes never guess.
"""

from __future__ import annotations


class AgentboltError(Exception):
    """Base of every agentbolt error."""

    http_status = 500
    code = "internal_error"


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
