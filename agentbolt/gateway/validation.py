"""Request bodies validated as the OpenAI request models; a refusal is a 400 naming the field (``param``).

Parameters of OpenAI's API that a local text model cannot honour are refused by name, with what to do
instead (code ``unsupported_parameter``), as are fields the gateway does not know.

Ranges the request models leave open are checked here too, so that nothing the engine cannot run gets past
the boundary (the engine checks again and fails only the one request, but a 400 naming the field is clearer):

* ``seed``: a 64-bit signed integer, as OpenAI documents it (choice ``i`` samples with ``seed + i``).
* ``temperature``: 0 (greedy) or at least :data:`MIN_TEMPERATURE`. Smaller positive values are refused
  rather than read as greedy: the trainer recomputes logprobs at the temperature a call was sampled at, so
  the gateway must not silently sample at another one.
* ``frequency_penalty`` / ``presence_penalty``: OpenAI's range [-2, 2] (then only 0 is supported).
* ``stop``: empty strings are accepted and ignored (an empty string stops nothing: ``stop_strings()``).

Non-finite numbers (``NaN``, ``Infinity``, ``1e400``) are refused when the body is parsed (:func:`parse_json`).
"""

from __future__ import annotations

import json
import math
from typing import Any, TypeVar

from pydantic import ValidationError

from agentbolt.gateway.errors import GatewayError
from agentbolt.types import MIN_TEMPERATURE, ChatCompletionRequest, CompletionRequest

Request = TypeVar("Request", ChatCompletionRequest, CompletionRequest)

_UNSUPPORTED: dict[str, str] = {
    "functions": "'functions' is the deprecated form of tool calling: send 'tools' instead",
    "function_call": "'function_call' is deprecated: send 'tool_choice' instead",
    "audio": "audio output is not supported: this gateway serves a text model",
    "prediction": "predicted outputs are not supported",
    "web_search_options": "web search is not supported",
}
_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "dict", "list", "none"})

SEED_MIN, SEED_MAX = -(2**63), 2**63 - 1  # OpenAI's seed is an int64; the engine takes -2**63..2**64-1
PENALTY_RANGE = (-2.0, 2.0)  # OpenAI's range of frequency_penalty and presence_penalty


def parse_json(raw: bytes) -> Any:
    """The JSON value of a request body, refusing what is not strict JSON.

    Raises:
        GatewayError: 400 ``invalid_json``: not JSON, nested too deeply for the parser, or holding a
            non-finite number (``NaN``, ``Infinity``, a literal like ``1e400`` that overflows a float).
    """
    try:
        return json.loads(raw, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:
        raise GatewayError("request body is nested too deeply to parse", code="invalid_json") from None
    except ValueError as exc:  # includes JSONDecodeError and UnicodeDecodeError
        raise GatewayError(f"request body is not valid JSON: {exc}", code="invalid_json") from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number: send a finite number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} overflows a double: send a finite number")
    return value


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
        req = model.model_validate(body)
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
    check_ranges(req)
    return req


def check_ranges(req: ChatCompletionRequest | CompletionRequest) -> None:
    """Refuse sampling parameters the request models accept but the engine cannot run (see the module doc).

    Raises:
        GatewayError: 400 naming the parameter.
    """
    if req.seed is not None and not SEED_MIN <= req.seed <= SEED_MAX:
        raise GatewayError(
            f"seed is {req.seed}: it must be a 64-bit signed integer, from {SEED_MIN} to {SEED_MAX}", param="seed"
        )
    if req.temperature is not None and 0 < req.temperature < MIN_TEMPERATURE:
        raise GatewayError(
            f"temperature is {req.temperature}: it must be 0 (greedy) or at least {MIN_TEMPERATURE}",
            param="temperature",
        )
    for name in ("frequency_penalty", "presence_penalty"):
        value = getattr(req, name)
        if value is not None and not PENALTY_RANGE[0] <= value <= PENALTY_RANGE[1]:
            raise GatewayError(
                f"{name} is {value}: it must be from {PENALTY_RANGE[0]} to {PENALTY_RANGE[1]}", param=name
            )


def _is_union_tag(part: object) -> bool:
    """Whether a pydantic error location part names a union alternative rather than a field."""
    return isinstance(part, str) and (part in _TYPE_TAGS or "[" in part or "-" in part)
