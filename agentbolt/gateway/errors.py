"""The gateway's errors: OpenAI's error shape (:func:`agentbolt.errors.error_body`), the field at fault named."""

from __future__ import annotations

import json

from fastapi import Response

from agentbolt.errors import AgentboltError, error_body_of


class GatewayError(AgentboltError):
    """A call the gateway refuses; ``status``, ``code`` and ``param`` go into the response.

    Args:
        message: what is wrong and what to do about it.
        status: HTTP status (4xx; 500 for a failure no stage expected); it decides the body's ``type``
            (:func:`agentbolt.errors.error_type`).
        code: the specific reason (``invalid_value``, ``unsupported_parameter``, ``model_not_found``...).
        param: the request field at fault, if one is.
    """

    def __init__(self, message: str, *, status: int = 400, code: str = "invalid_value", param: str | None = None):
        super().__init__(message)
        self.http_status = status
        self.code = code
        self.param = param


def error_response(exc: AgentboltError) -> Response:
    """The JSON error response for ``exc``.

    409s carry ``x-should-retry: false``: the official OpenAI client retries 409 by default, and a
    finished attempt or a fidelity mismatch does not go away on a retry.
    """
    headers = {"x-should-retry": "false"} if exc.http_status == 409 else None
    body = json.dumps(error_body_of(exc))
    return Response(body, status_code=exc.http_status, media_type="application/json", headers=headers)
