"""Request bodies validated as the OpenAI request models; a refusal is a 400 naming the field (``param``).

Parameters of OpenAI's API that a local text model cannot honour are refused by name, with what to do
instead (code ``unsupported_parameter``), as are fields the gateway does not know.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import ValidationError

from agentbolt.gateway.errors import GatewayError
from agentbolt.types import ChatCompletionRequest, CompletionRequest

Request = TypeVar("Request", ChatCompletionRequest, CompletionRequest)

_UNSUPPORTED: dict[str, str] = {
    "functions": "'functions' is the deprecated form of tool calling: send 'tools' instead",
    "function_call": "'function_call' is deprecated: send 'tool_choice' instead",
    "audio": "audio output is not supported: this gateway serves a text model",
    "prediction": "predicted outputs are not supported",
    "web_search_options": "web search is not supported",
}
_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "dict", "list", "none"})


def validate_body(model: type[Request], body: Any) -> Request:
    """``body`` validated as ``model``.

    Raises:
        GatewayError: 400 naming the field at fault in ``param`` (the most telling one when several are).
    """
    if not isinstance(body, dict):
        raise GatewayError("the request body must be a JSON object")
    for key, why in _UNSUPPORTED.items():
        if body.get(key) is not None:
            raise GatewayError(why, param=key, code="unsupported_parameter")
    modalities = body.get("modalities")
    if modalities is not None:
        if modalities != ["text"]:
            raise GatewayError("only text output is supported: modalities must be ['text']", param="modalities")
        body = {k: v for k, v in body.items() if k != "modalities"}
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        # Of the alternatives a union reports, the most telling: our own checks, then unknown fields.
        errors = sorted(exc.errors(), key=lambda e: {"value_error": 0, "extra_forbidden": 1}.get(e["type"], 2))
        error = errors[0]
        loc = [str(p) for p in error.get("loc", ()) if not _is_union_tag(p)]
        param = ".".join(loc) or None
        if error.get("type") == "extra_forbidden":
            raise GatewayError(
                f"unsupported parameter {param!r}: the agentbolt gateway does not implement it",
                param=param,
                code="unsupported_parameter",
            ) from None
        message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
        raise GatewayError(f"invalid {param or 'request'}: {message}", param=param) from None


def _is_union_tag(part: object) -> bool:
    """Whether a pydantic error location part names a union alternative rather than a field."""
    return isinstance(part, str) and (part in _TYPE_TAGS or "[" in part or "-" in part)
