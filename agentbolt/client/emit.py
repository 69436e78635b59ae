"""Signals an agent records from inside a rollout: rewards, exceptions, messages, annotations,
tool calls and agent scopes. Each becomes an OpenTelemetry span of the current attempt.

Called outside an attempt (e.g. when the agent runs in a plain script) they still create spans,
which the worker's exporter does not send; a warning says so once.
"""

from __future__ import annotations

import json
import logging
import math
import traceback
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from agentbolt import semconv
from agentbolt.client.tracing import current_attempt, tracer
from agentbolt.errors import BadInput

log = logging.getLogger(__name__)
_warned_outside = False


def _check_inside(what: str) -> None:
    global _warned_outside
    if current_attempt() is None and not _warned_outside:
        _warned_outside = True
        log.warning("%s called outside a rollout attempt: the signal is not recorded by agentbolt", what)


def attribute_value(value: Any) -> str | int | float | bool:
    """OTel attributes hold primitives; anything else is stored as JSON text."""
    if isinstance(value, (str, bool, int, float)):
        return value
    return json.dumps(value, default=str)


def emit_reward(value: float | Mapping[str, float], *, primary: str | None = None, final: bool = True) -> float:
    """Record a reward for the current attempt and return its primary scalar.

    Args:
        value: a number, or named dimensions such as ``{"correct": 1.0, "format": 0.5}``.
        primary: with dimensions, the one that stands for the reward (needed when there are several).
        final: True for the episode's reward (the last final one wins); False for an intermediate
            reward, credited to the step it follows.

    Raises:
        BadInput: a value that is not a finite number, or several dimensions without a primary.
    """
    _check_inside("emit_reward")
    dimensions: dict[str, float] = {}
    if isinstance(value, Mapping):
        if not value:
            raise BadInput("emit_reward got no dimensions")
        dimensions = {str(k): float(v) for k, v in value.items()}
        if primary is None and len(dimensions) > 1:
            raise BadInput(f"emit_reward got dimensions {sorted(dimensions)}: say which is primary=")
        if primary is not None and primary not in dimensions:
            raise BadInput(f"primary {primary!r} is not one of {sorted(dimensions)}")
        scalar = dimensions[primary or next(iter(dimensions))]
    else:
        scalar = float(value)
    if not all(math.isfinite(v) for v in (scalar, *dimensions.values())):
        raise BadInput(f"a reward must be a finite number, got {value!r}")
    attributes: dict[str, Any] = {semconv.REWARD_VALUE: scalar, semconv.REWARD_FINAL: final}
    if dimensions:
        attributes[semconv.REWARD_DIMENSIONS] = json.dumps(dimensions)
    if primary is not None:
        attributes[semconv.REWARD_PRIMARY] = primary
    with tracer().start_as_current_span(semconv.SPAN_REWARD, attributes=attributes):
        pass
    ctx = current_attempt()
    if ctx is not None:
        ctx.rewards_emitted += 1
        if final:
            ctx.final_reward = scalar
    return scalar


def emit_exception(exc: BaseException) -> None:
    """Record an exception the agent caught and handled (uncaught ones are recorded by the worker)."""
    _check_inside("emit_exception")
    attributes = {
        semconv.EXCEPTION_TYPE: type(exc).__qualname__,
        semconv.EXCEPTION_MESSAGE: str(exc),
        semconv.EXCEPTION_STACKTRACE: "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
    }
    with tracer().start_as_current_span(semconv.SPAN_EXCEPTION, attributes=attributes) as span:
        span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, str(exc)))


def emit_message(text: str) -> None:
    """Record a free-text message (a log line worth keeping with the trace)."""
    _check_inside("emit_message")
    with tracer().start_as_current_span(semconv.SPAN_MESSAGE, attributes={semconv.MESSAGE_TEXT: str(text)}):
        pass


def emit_annotation(annotations: Mapping[str, Any]) -> None:
    """Record key/value annotations (e.g. the task's difficulty, the agent's plan)."""
    _check_inside("emit_annotation")
    attributes = {semconv.ANNOTATION_PREFIX + str(k): attribute_value(v) for k, v in annotations.items()}
    with tracer().start_as_current_span(semconv.SPAN_ANNOTATION, attributes=attributes):
        pass


class ToolCall:
    """Handle of a running tool-call span: set its result, or mark it failed without raising."""

    def __init__(self, span: trace.Span) -> None:
        self.span = span
        self.failed = False

    def set_result(self, result: Any) -> None:
        self.span.set_attribute(semconv.TOOL_RESULT, attribute_value(result))

    def fail(self, message: str) -> None:
        """Mark the call failed (an AIR signal) when the tool reports an error instead of raising."""
        self.failed = True
        self.span.set_attribute(semconv.TOOL_SUCCESS, False)
        self.span.set_status(Status(StatusCode.ERROR, message))


@contextmanager
def tool_call(name: str, arguments: Any = None, call_id: str | None = None) -> Iterator[ToolCall]:
    """Trace one tool call, recording whether it succeeded (the raw material for AIR).

    Use as ``with agentbolt.tool_call("calculator", {"expr": e}) as call: call.set_result(run(e))``.
    An exception escaping the block marks the call failed and is re-raised; ``call.fail(msg)``
    marks it failed without raising. ``call_id`` links it to the model's ``tool_calls[].id``.
    """
    _check_inside("tool_call")
    attributes: dict[str, Any] = {semconv.GEN_AI_OPERATION: semconv.OP_EXECUTE_TOOL, semconv.GEN_AI_TOOL_NAME: name}
    if arguments is not None:
        attributes[semconv.TOOL_ARGUMENTS] = attribute_value(arguments)
    if call_id is not None:
        attributes[semconv.GEN_AI_TOOL_CALL_ID] = call_id
    with tracer().start_as_current_span(
        f"{semconv.OP_EXECUTE_TOOL} {name}", attributes=attributes, record_exception=True, set_status_on_exception=True
    ) as span:
        call = ToolCall(span)
        try:
            yield call
        except BaseException:
            span.set_attribute(semconv.TOOL_SUCCESS, False)
            raise
        if not call.failed:
            span.set_attribute(semconv.TOOL_SUCCESS, True)


@contextmanager
def agent(name: str) -> Iterator[trace.Span]:
    """Mark the code inside as run by the agent ``name`` (for selecting which agents to train)."""
    attributes = {semconv.GEN_AI_OPERATION: semconv.OP_INVOKE_AGENT, semconv.GEN_AI_AGENT_NAME: name}
    with tracer().start_as_current_span(f"{semconv.OP_INVOKE_AGENT} {name}", attributes=attributes) as span:
        yield span
