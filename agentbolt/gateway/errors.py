"""The gateway's errors: OpenAI's error shape, with the parameter at fault named."""

from __future__ import annotations

import json
from typing import Any

from fastapi import Response

from agentbolt.errors import AgentboltError


class GatewayError(AgentboltError):
    """A call the gateway refuses; ``status``, ``code`` and ``param`` go into the response.

    Args:
        message: what is wrong and what to do about it.
        status: HTTP status (4xx).
        code: OpenAI-style error code (``invalid_request_error``, ``model_not_found``...).
        param: the request field at fault, if one is.
    """

    def __init__(
        self, message: str, *, status: int = 400, code: str = "invalid_request_error", param: str | None = None
    ):
        super().__init__(message)
        self.http_status = status
        self.code = code
        self.param = param


def error_body(message: str, code: str, param: str | None = None) -> dict[str, Any]:
    """OpenAI's error shape, as every agentbolt route answers (agentbolt.server.guards has the same;
    the gateway keeps its own copy so importing it never imports the server package)."""
    return {"error": {"message": message, "type": code, "param": param, "code": code}}


def error_response(exc: AgentboltError) -> Response:
    """The JSON error response for ``exc``.

    409s carry ``x-should-retry: false``: the official OpenAI client retries 409 by default, and a
    finished attempt or a fidelity mismatch does not go away on a retry.
    """
    param = exc.param if isinstance(exc, GatewayError) else None
    headers = {"x-should-retry": "false"} if exc.http_status == 409 else None
    body = json.dumps(error_body(str(exc), exc.code, param))
    return Response(body, status_code=exc.http_status, media_type="application/json", headers=headers)
