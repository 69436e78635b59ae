"""OpenTelemetry spans as agentbolt stores them: with rollout id, attempt id and a per-attempt sequence number.

Timestamps are nanoseconds since the epoch (int), as OpenTelemetry has them.
"""

from __future__ import annotations

from enum import Enum
from typing import Literal

from pydantic import Field, model_validator

from agentbolt.types.base import JSONValue, Nanos, _Model
from agentbolt.types.openai import ErrorObject


class SpanStatusCode(str, Enum):
    UNSET = "UNSET"
    OK = "OK"
    ERROR = "ERROR"


class SpanStatus(_Model):
    code: SpanStatusCode = SpanStatusCode.UNSET
    message: str = ""


class SpanEvent(_Model):
    name: str
    time_ns: Nanos
    attributes: dict[str, JSONValue] = Field(default_factory=dict)


class SpanLink(_Model):
    trace_id: str
    span_id: str
    attributes: dict[str, JSONValue] = Field(default_factory=dict)


SpanKind = Literal["INTERNAL", "SERVER", "CLIENT", "PRODUCER", "CONSUMER", "UNSPECIFIED"]

_HEX32 = r"^[0-9a-f]{32}$"
_HEX16 = r"^[0-9a-f]{16}$"


class SpanIn(_Model):
    """A span as received (OTLP, gateway, reward API), before the store numbers it."""

    rollout_id: str | None = Field(default=None, description="None only for unattributed gateway calls.")
    attempt_id: str | None = None
    trace_id: str = Field(pattern=_HEX32, description="32 lowercase hex characters.")
    span_id: str = Field(pattern=_HEX16, description="16 lowercase hex characters.")
    parent_id: str | None = Field(default=None, pattern=_HEX16)
    name: str = Field(max_length=1000)
    kind: SpanKind = "INTERNAL"
    start_time_ns: Nanos
    end_time_ns: Nanos
    attributes: dict[str, JSONValue] = Field(default_factory=dict)
    events: list[SpanEvent] = Field(default_factory=list)
    links: list[SpanLink] = Field(default_factory=list)
    status: SpanStatus = Field(default_factory=SpanStatus)
    resource: dict[str, JSONValue] = Field(default_factory=dict)
    scope: str | None = Field(default=None, description="Instrumentation scope name.")

    @model_validator(mode="after")
    def _attempt_needs_rollout(self) -> SpanIn:
        if self.attempt_id is not None and self.rollout_id is None:
            raise ValueError("a span with an attempt_id must also carry a rollout_id")
        return self


class Span(SpanIn):
    """A stored span. ``sequence_id`` orders the spans of one attempt by arrival at the store."""

    sequence_id: int


class AddSpansResult(_Model):
    inserted: int
    duplicates: int = Field(description="Spans already stored (same trace id and span id); kept once.")


class TraceExportError(_Model):
    """The JSON body of a refused ``POST /v1/traces``: a ``google.rpc.Status`` plus agentbolt's error object."""

    code: int = Field(description="The google.rpc.Code (3 INVALID_ARGUMENT, 5 NOT_FOUND, 8 RESOURCE_EXHAUSTED...).")
    message: str
    error: ErrorObject
