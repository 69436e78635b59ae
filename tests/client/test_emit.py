"""The signal helpers (`emit_*`, `tool_call`, `agent`): the spans they write, and what they refuse."""

from __future__ import annotations

import json
import logging

import pytest
from opentelemetry.trace import StatusCode

import agentbolt
from agentbolt import semconv
from agentbolt.client import emit
from agentbolt.errors import BadInput

from .spans import MemoryTracing, in_attempt


@pytest.fixture
def otel(monkeypatch: pytest.MonkeyPatch) -> MemoryTracing:
    tracing = MemoryTracing()
    monkeypatch.setattr(emit, "tracer", tracing.tracer)
    return tracing


def test_emit_reward_writes_a_final_reward_span_in_the_attempt(otel: MemoryTracing) -> None:
    with in_attempt("ro-7", "at-7") as ctx:
        assert agentbolt.emit_reward(0.5) == 0.5
    span = otel.one(semconv.SPAN_REWARD)
    assert span.attributes is not None
    assert span.attributes[semconv.REWARD_VALUE] == 0.5
    assert span.attributes[semconv.REWARD_FINAL] is True
    assert span.attributes[semconv.ROLLOUT_ID] == "ro-7" and span.attributes[semconv.ATTEMPT_ID] == "at-7"
    assert (ctx.final_reward, ctx.rewards_emitted) == (0.5, 1)


def test_the_last_final_reward_wins_and_intermediate_ones_do_not_replace_it(otel: MemoryTracing) -> None:
    with in_attempt() as ctx:
        agentbolt.emit_reward(0.2)
        agentbolt.emit_reward(0.9)
        agentbolt.emit_reward(-0.1, final=False)
    assert (ctx.final_reward, ctx.rewards_emitted) == (0.9, 3)
    finals = [s.attributes[semconv.REWARD_FINAL] for s in otel.spans() if s.attributes]
    assert finals == [True, True, False]


def test_reward_dimensions_are_stored_with_their_primary(otel: MemoryTracing) -> None:
    with in_attempt():
        value = agentbolt.emit_reward({"correct": 1.0, "format": 0.25}, primary="format")
    assert value == 0.25
    span = otel.one(semconv.SPAN_REWARD)
    assert span.attributes is not None
    assert json.loads(str(span.attributes[semconv.REWARD_DIMENSIONS])) == {"correct": 1.0, "format": 0.25}
    assert span.attributes[semconv.REWARD_PRIMARY] == "format"
    assert span.attributes[semconv.REWARD_VALUE] == 0.25


def test_one_dimension_needs_no_primary(otel: MemoryTracing) -> None:
    with in_attempt():
        assert agentbolt.emit_reward({"f1": 0.75}) == 0.75


@pytest.mark.parametrize(
    ("value", "primary", "message"),
    [
        ({}, None, "no dimensions"),
        ({"a": 1.0, "b": 0.0}, None, "say which is primary"),
        ({"a": 1.0}, "b", "'b' is not one of"),
        (float("nan"), None, "finite number"),
        ({"a": float("inf")}, None, "finite number"),
    ],
)
def test_bad_rewards_are_refused_and_write_nothing(
    otel: MemoryTracing, value: object, primary: str | None, message: str
) -> None:
    with in_attempt() as ctx, pytest.raises(BadInput, match=message):
        agentbolt.emit_reward(value, primary=primary)  # type: ignore[arg-type]
    assert otel.spans() == []
    assert ctx.rewards_emitted == 0


def test_emit_exception_records_type_message_and_error_status(otel: MemoryTracing) -> None:
    try:
        raise KeyError("missing column")
    except KeyError as exc:
        with in_attempt():
            agentbolt.emit_exception(exc)
    span = otel.one(semconv.SPAN_EXCEPTION)
    assert span.attributes is not None
    assert span.attributes[semconv.EXCEPTION_TYPE] == "KeyError"
    assert "missing column" in str(span.attributes[semconv.EXCEPTION_MESSAGE])
    assert "raise KeyError" in str(span.attributes[semconv.EXCEPTION_STACKTRACE])
    assert span.status.status_code is StatusCode.ERROR
    assert [e.name for e in span.events] == [semconv.EXCEPTION_EVENT]


def test_messages_and_annotations_become_spans_with_json_for_structured_values(otel: MemoryTracing) -> None:
    with in_attempt():
        agentbolt.emit_message("planning")
        agentbolt.emit_annotation({"difficulty": 3, "plan": ["search", "answer"]})
    message = otel.one(semconv.SPAN_MESSAGE)
    assert message.attributes is not None and message.attributes[semconv.MESSAGE_TEXT] == "planning"
    annotation = otel.one(semconv.SPAN_ANNOTATION)
    assert annotation.attributes is not None
    assert annotation.attributes[semconv.ANNOTATION_PREFIX + "difficulty"] == 3
    assert json.loads(str(annotation.attributes[semconv.ANNOTATION_PREFIX + "plan"])) == ["search", "answer"]


def test_attribute_value_keeps_primitives_and_writes_the_rest_as_json() -> None:
    assert [emit.attribute_value(v) for v in ("a", 1, 2.5, True)] == ["a", 1, 2.5, True]
    assert emit.attribute_value({"x": [1, 2]}) == '{"x": [1, 2]}'
    assert emit.attribute_value(None) == "null"


def test_a_tool_call_that_returns_is_a_success_with_its_arguments_and_result(otel: MemoryTracing) -> None:
    with in_attempt(), agentbolt.tool_call("calculator", {"expr": "2+2"}, call_id="call_1") as call:
        call.set_result(4)
    span = otel.one(f"{semconv.OP_EXECUTE_TOOL} calculator")
    assert span.attributes is not None
    assert span.attributes[semconv.GEN_AI_OPERATION] == semconv.OP_EXECUTE_TOOL
    assert span.attributes[semconv.GEN_AI_TOOL_NAME] == "calculator"
    assert json.loads(str(span.attributes[semconv.TOOL_ARGUMENTS])) == {"expr": "2+2"}
    assert span.attributes[semconv.TOOL_RESULT] == 4
    assert span.attributes[semconv.GEN_AI_TOOL_CALL_ID] == "call_1"
    assert span.attributes[semconv.TOOL_SUCCESS] is True
    assert span.status.status_code is not StatusCode.ERROR


def test_a_tool_call_marked_failed_is_a_failure_without_raising(otel: MemoryTracing) -> None:
    with in_attempt(), agentbolt.tool_call("search") as call:
        call.fail("index offline")
    span = otel.one(f"{semconv.OP_EXECUTE_TOOL} search")
    assert span.attributes is not None and span.attributes[semconv.TOOL_SUCCESS] is False
    assert span.status.status_code is StatusCode.ERROR and span.status.description == "index offline"


def test_an_exception_escaping_a_tool_call_marks_it_failed_and_propagates(otel: MemoryTracing) -> None:
    with in_attempt(), pytest.raises(ZeroDivisionError), agentbolt.tool_call("calculator", "1/0"):
        raise ZeroDivisionError("division by zero")
    span = otel.one(f"{semconv.OP_EXECUTE_TOOL} calculator")
    assert span.attributes is not None and span.attributes[semconv.TOOL_SUCCESS] is False
    assert span.status.status_code is StatusCode.ERROR
    assert [e.name for e in span.events] == [semconv.EXCEPTION_EVENT]


def test_spans_inside_an_agent_scope_are_its_children(otel: MemoryTracing) -> None:
    with in_attempt(), agentbolt.agent("writer"), agentbolt.tool_call("sql") as call:
        call.set_result("ok")
    scope = otel.one(f"{semconv.OP_INVOKE_AGENT} writer")
    tool = otel.one(f"{semconv.OP_EXECUTE_TOOL} sql")
    assert scope.attributes is not None and scope.attributes[semconv.GEN_AI_AGENT_NAME] == "writer"
    assert tool.parent is not None and scope.context is not None
    assert tool.parent.span_id == scope.context.span_id


def test_a_signal_outside_any_attempt_warns_once(
    otel: MemoryTracing, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(emit, "_warned_outside", False)
    with caplog.at_level(logging.WARNING, logger=emit.__name__):
        agentbolt.emit_reward(1.0)
        agentbolt.emit_message("again")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["emit_reward called outside a rollout attempt: the signal is not recorded by agentbolt"]
    span = otel.one(semconv.SPAN_REWARD)
    assert span.attributes is not None and semconv.ROLLOUT_ID not in span.attributes
