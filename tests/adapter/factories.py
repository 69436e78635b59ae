"""Builders of stored spans, rollouts and episodes for the adapter, credit and trainer unit tests."""

from __future__ import annotations

import json
import secrets
from typing import Any

from agentbolt import semconv
from agentbolt.types import (
    Attempt,
    AttemptStatus,
    Episode,
    ErrorInfo,
    RewardRecord,
    Rollout,
    RolloutConfig,
    RolloutStatus,
    Span,
    SpanEvent,
    SpanStatus,
    SpanStatusCode,
    ToolOutcome,
    Transition,
)


class AttemptSpans:
    """The spans of one attempt in arrival order: each new span gets the next sequence id and a later clock."""

    def __init__(self, rollout_id: str = "r1", attempt_id: str = "a1") -> None:
        self.rollout_id = rollout_id
        self.attempt_id = attempt_id
        self.trace_id = secrets.token_hex(16)
        self.spans: list[Span] = []
        self.clock = 1_000_000

    def add(
        self,
        name: str,
        attributes: dict[str, Any],
        *,
        parent: Span | None = None,
        start: int | None = None,
        end: int | None = None,
        error: str | None = None,
        events: list[SpanEvent] | None = None,
    ) -> Span:
        if start is None:
            start = self.clock
            self.clock += 1_000
        span = Span(
            rollout_id=self.rollout_id,
            attempt_id=self.attempt_id,
            trace_id=self.trace_id,
            span_id=secrets.token_hex(8),
            parent_id=parent.span_id if parent else None,
            name=name,
            start_time_ns=start,
            end_time_ns=end if end is not None else start + 500,
            attributes=attributes,
            events=events or [],
            status=SpanStatus(code=SpanStatusCode.ERROR, message=error) if error else SpanStatus(),
            sequence_id=len(self.spans),
        )
        self.spans.append(span)
        return span

    def llm(
        self,
        prompt: list[int] | None = None,
        response: list[int] | None = None,
        logprobs: list[float] | None = None,
        *,
        agent: str | None = None,
        finish: str = "stop",
        tool_call_ids: list[str] | None = None,
        malformed: bool = False,
        version: int = 0,
        model: str = "policy",
        parent: Span | None = None,
        start: int | None = None,
        drop: tuple[str, ...] = (),
        extra: dict[str, Any] | None = None,
    ) -> Span:
        """A gateway LLM-call span; ``drop`` removes attributes (to build broken spans)."""
        prompt = [1, 2, 3] if prompt is None else prompt
        response = [7, 8] if response is None else response
        attributes: dict[str, Any] = {
            semconv.GEN_AI_OPERATION: "chat",
            semconv.GEN_AI_SYSTEM: "agentbolt",
            semconv.GEN_AI_REQUEST_MODEL: model,
            semconv.GEN_AI_RESPONSE_MODEL: model,
            semconv.GEN_AI_RESPONSE_FINISH_REASONS: [finish],
            semconv.LLM_PROMPT_TOKEN_IDS: prompt,
            semconv.LLM_RESPONSE_TOKEN_IDS: response,
            semconv.LLM_RESPONSE_LOGPROBS: [-0.5] * len(response) if logprobs is None else logprobs,
            semconv.LLM_MODEL_VERSION: version,
            semconv.LLM_TOKEN_SOURCE: "engine",
            semconv.LLM_TOOL_CALL_MALFORMED: malformed,
        }
        if agent is not None:
            attributes[semconv.LLM_AGENT_NAME] = agent
        if tool_call_ids is not None:
            attributes[semconv.LLM_TOOL_CALLS] = json.dumps(
                [{"id": i, "type": "function", "function": {"name": "calc", "arguments": "{}"}} for i in tool_call_ids]
            )
        attributes.update(extra or {})
        for key in drop:
            attributes.pop(key)
        return self.add(f"chat {model}", attributes, parent=parent, start=start)

    def tool(self, name: str = "calc", *, success: bool | None = True, call_id: str | None = None, **kw: Any) -> Span:
        attributes: dict[str, Any] = {semconv.GEN_AI_OPERATION: "execute_tool", semconv.GEN_AI_TOOL_NAME: name}
        if success is not None:
            attributes[semconv.TOOL_SUCCESS] = success
        if call_id is not None:
            attributes[semconv.GEN_AI_TOOL_CALL_ID] = call_id
        return self.add(f"execute_tool {name}", attributes, **kw)

    def reward(
        self, value: float | None, *, final: bool = True, dimensions: dict[str, float] | None = None, **kw: Any
    ) -> Span:
        attributes: dict[str, Any] = {semconv.REWARD_FINAL: final}
        if value is not None:
            attributes[semconv.REWARD_VALUE] = value
        if dimensions is not None:
            attributes[semconv.REWARD_DIMENSIONS] = json.dumps(dimensions)
        return self.add(semconv.SPAN_REWARD, attributes, **kw)

    def exception(self, type_name: str = "ValueError", **kw: Any) -> Span:
        attributes = {semconv.EXCEPTION_TYPE: type_name, semconv.EXCEPTION_MESSAGE: "boom"}
        return self.add(semconv.SPAN_EXCEPTION, attributes, error="boom", **kw)

    def agent(self, name: str, *, start: int, end: int, parent: Span | None = None) -> Span:
        attributes = {semconv.GEN_AI_OPERATION: "invoke_agent", semconv.GEN_AI_AGENT_NAME: name}
        return self.add(f"invoke_agent {name}", attributes, start=start, end=end, parent=parent)

    def root(self, number: int = 1, *, exception: str | None = None) -> Span:
        attributes = {"agentbolt.attempt.number": number}
        events = [SpanEvent(name="exception", time_ns=self.clock, attributes={semconv.EXCEPTION_TYPE: exception})]
        return self.add(semconv.SPAN_ATTEMPT, attributes, start=0, end=10**12, events=events if exception else None)


def attempt(attempt_id: str, number: int, status: AttemptStatus, rollout_id: str = "r1", error: str | None = None):
    return Attempt(
        attempt_id=attempt_id,
        rollout_id=rollout_id,
        number=number,
        status=status,
        started_at=float(number),
        last_heartbeat_at=float(number),
        error=ErrorInfo(type=error) if error else None,
    )


def rollout(
    rollout_id: str = "r1",
    *,
    group_id: str | None = None,
    status: RolloutStatus = RolloutStatus.SUCCEEDED,
    reward: float | None = None,
    attempts: list[Attempt] | str | None = "default",
) -> Rollout:
    """A finished rollout with one succeeded attempt ``a1`` unless told otherwise (None: attempts unknown)."""
    if attempts == "default":
        attempts = [attempt("a1", 1, AttemptStatus.SUCCEEDED, rollout_id)]
    assert not isinstance(attempts, str)
    return Rollout(
        rollout_id=rollout_id,
        input={},
        mode="train",
        group_id=group_id,
        config=RolloutConfig(),
        status=status,
        created_at=0.0,
        num_attempts=len(attempts or []),
        reward=reward,
        attempts=attempts,
    )


def transition(
    index: int = 0,
    *,
    rollout_id: str = "r1",
    response_len: int = 2,
    tool_failures: int = 0,
    tool_successes: int = 0,
    malformed: bool = False,
    finish: str = "stop",
    exceptions: list[str] | None = None,
    rewards: list[float] | None = None,
) -> Transition:
    """A transition built directly (no spans), for credit and AIR tests."""
    outcomes = [ToolOutcome(name="calc", success=False) for _ in range(tool_failures)]
    outcomes += [ToolOutcome(name="calc", success=True) for _ in range(tool_successes)]
    return Transition(
        rollout_id=rollout_id,
        attempt_id="a1",
        index=index,
        span_id=f"{index:016x}",
        sequence_id=index,
        prompt_token_ids=[1, 2],
        response_token_ids=list(range(response_len)),
        logprobs=[-0.5] * response_len,
        finish_reason=finish,
        tool_outcomes=outcomes,
        tool_call_malformed=malformed,
        exceptions=exceptions or [],
        rewards=[RewardRecord(value=r, final=False) for r in rewards or []],
    )


def episode(
    transitions: list[Transition],
    *,
    final: float | None = 1.0,
    rollout_id: str = "r1",
    status: AttemptStatus = AttemptStatus.SUCCEEDED,
    uncaught_exception: str | None = None,
    rollout_reward: float | None = None,
) -> Episode:
    return Episode(
        rollout_id=rollout_id,
        attempt_id="a1",
        attempt_status=status,
        transitions=transitions,
        final_reward=RewardRecord(value=final) if final is not None else None,
        rollout_reward=rollout_reward,
        uncaught_exception=uncaught_exception,
    )
