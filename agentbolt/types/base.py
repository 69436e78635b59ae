"""The base of every agentbolt wire and storage model, and the aliases the others share."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

JSONValue = Any
"""Any JSON-serialisable value (a task's input, an attribute value)."""

RolloutMode = Literal["train", "val", "test"]

SpanDurability = Literal["answer", "finish"]
"""When the gateway stores a call's spans: before it answers, or by its attempt's finish (gateway/recorder.py)."""

# The bounds policy: every number from outside that reaches the store (SQLite, PostgreSQL) or the
# trainer is one of these types, so an out-of-range value is a 400 naming its field, never a driver error.
# Integers are strict (JSON ``true`` is not 1); floats are finite (a NaN reward would poison a step).
# A field with a narrower range of its own (``max_attempts``, ``limit``) declares ``Field(strict=True, ge=,
# le=)`` inside these bounds instead: pydantic drops a ``Field``'s bounds given on top of an alias's.
INT32_MAX = 2**31 - 1
"""Largest value of an INTEGER column on PostgreSQL (model versions, attempt numbers, counts)."""
INT64_MAX = 2**63 - 1
"""Largest value of SQLite's INTEGER and PostgreSQL's BIGINT (nanosecond timestamps, offsets)."""

StoreInt = Annotated[int, Field(strict=True, ge=0, le=INT32_MAX)]
"""A non-negative integer of a JSON body stored in an INTEGER column (a model version, a count)."""
Nanos = Annotated[int, Field(ge=0, le=INT64_MAX)]
"""A nanosecond timestamp (stored in a BIGINT column). Spans are built in code (OTLP decoders, the gateway),
whose decoders already refuse booleans, so this one is not strict."""
QueryOffset = Annotated[int, Field(ge=0, le=INT64_MAX)]
"""A pagination offset (a query parameter: parsed from text, so not strict)."""
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
"""A float that is not NaN or ±Infinity (rewards, timeouts)."""


def non_finite_path(value: Any) -> str | None:
    """The path (``a.0.b``) of the first NaN or ±Infinity inside a JSON value, or None when all are finite.

    Python's ``json`` reads the literals ``NaN``/``Infinity`` and ``1e999`` (as inf); none of them is JSON.
    The walk is iterative, so a deeply nested value cannot exhaust the stack.
    """
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return path or "(value)"
        if isinstance(item, dict):
            stack.extend((f"{path}.{key}" if path else str(key), inner) for key, inner in item.items())
        elif isinstance(item, list):
            stack.extend((f"{path}.{i}" if path else str(i), inner) for i, inner in enumerate(item))
    return None


def _finite_json(value: Any) -> Any:
    path = non_finite_path(value)
    if path is not None:
        raise ValueError(f"holds a number that is not finite (NaN or Infinity) at {path}; JSON has no such numbers")
    return value


FiniteJSON = Annotated[Any, AfterValidator(_finite_json)]
"""Any JSON value with only finite numbers (a task's input, metadata)."""

POLICY_MODEL = "policy"
"""The model name the gateway serves the policy as, unless told otherwise (``--served-model``)."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")
