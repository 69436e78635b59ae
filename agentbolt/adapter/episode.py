"""Spans of one finished rollout -> an :class:`~agentbolt.types.Episode` of transitions.

The rules, in the order they apply:

* **Rollouts.** Only finished rollouts are read: queuing/running ones are ``not_finished``, cancelled
  ones ``cancelled``. Only the rollout's last attempt is used (it produced the outcome); spans of
  earlier attempts are dropped and counted. The last attempt is the highest-numbered of
  ``Rollout.attempts`` (query rollouts ``with_attempts=True``); without them, the attempt whose
  ``agentbolt.attempt`` root span has the highest ``agentbolt.attempt.number``, else the attempt with
  the latest span start (clock order, the fallback only), and its status is then only known for a
  succeeded rollout. A rollout whose last attempt cannot be found is dropped as ``no_spans``.
  Rollout-level spans (no attempt id) are only used to walk parent ids; the reward API files rewards
  under the latest attempt.
* **Transitions.** A transition is one gateway LLM-call span (``gen_ai.operation.name`` chat or
  text_completion carrying ``agentbolt.llm.*`` attributes; LLM spans of client-side instrumentation
  carry none and are ignored). They are ordered by the attempt's sequence ids, never by clocks.
* **Drops**, checked in this order and counted by reason: ``fixed_model`` (served by one of the gateway's
  fixed models, ``agentbolt.llm.fixed``: those weights are never trained), ``model_filtered`` (not a
  policy model named in ``AdapterConfig.models``), ``agent_filtered`` (agent not selected), ``missing_token_ids``,
  ``missing_logprobs``, ``logprob_mismatch`` (not one per response token), ``bad_logprobs`` (not
  finite), ``empty_response``, ``retokenized`` (only with ``drop_retokenized``), ``prompt_too_long``,
  ``response_too_long`` (dropped whole: truncating would train on a context the model never saw).
* **Agent name** of a call: (1) the span's ``agentbolt.llm.agent_name`` (the ``X-Agentbolt-Agent``
  header); (2) the nearest ancestor, following ``parent_id`` through the rollout's spans, with
  ``gen_ai.agent.name`` (an OTel-instrumented agent that propagates ``traceparent``); (3) the
  innermost ``invoke_agent`` span of the same attempt whose [start, end] contains the call's start
  time; else None. Rule (3) compares the gateway's clock with the worker's: right when they share a
  host (``agentbolt train``), wrong by the clock skew across machines. With ``AdapterConfig.agents``
  set, a call with no agent name is dropped.
* **Signals.** Client spans (tool calls, rewards, exceptions) are placed after the last LLM call that
  precedes them (``AdapterConfig.signal_order``: by sequence id, or by start time against each call's
  end time). A tool call whose ``gen_ai.tool.call.id`` is one the model asked for is matched to that
  call by id, whatever the order. Tool calls, exceptions, truncation and malformed tool calls belong
  to the exact call; if that call was dropped they are lost. Intermediate rewards (final=False) go to
  the nearest kept transition at or before their place, because they are part of the episode's return;
  one before every kept transition is counted as unattributed. The final reward is the attempt's last
  final reward span by sequence id.

Why clock order is the default for signals: the worker exports its spans in batches (every 0.5 s)
while the gateway writes each LLM call at once, so by sequence id a client span can land after the
next LLM call (measured with LangGraph, the Agents SDK and CrewAI). Clock order is exact on one host;
across hosts it is off by the clock skew, so record tool call ids
(``agentbolt.tool_call(..., call_id=...)``), which are matched exactly in either mode.
"""

from __future__ import annotations

import bisect
import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any, Literal

from agentbolt import semconv
from agentbolt.types import (
    AdapterConfig,
    AttemptStatus,
    Episode,
    RewardRecord,
    Rollout,
    RolloutStatus,
    Span,
    SpanStatusCode,
    ToolOutcome,
    Transition,
)

AgentSource = Literal["header", "parent", "time"]


@dataclass
class AdapterResult:
    """An episode (None when the rollout gives none) and what was dropped on the way."""

    episode: Episode | None
    dropped: str | None = None  # why the rollout gave no episode
    transitions_dropped: Counter[str] = field(default_factory=Counter)
    earlier_attempts: int = 0
    earlier_attempt_spans: int = 0
    rewards_unattributed: int = 0
    rewards_invalid: int = 0


def build_episode(rollout: Rollout, spans: Sequence[Span], config: AdapterConfig) -> AdapterResult:
    """Turn a finished rollout's spans (all attempts) into the episode of its last attempt.

    Never raises on bad spans: whatever cannot be used is dropped and counted (see the module doc).
    """
    if rollout.status is RolloutStatus.CANCELLED:
        return AdapterResult(None, dropped="cancelled")
    if not rollout.status.finished:
        return AdapterResult(None, dropped="not_finished")
    attempt_id, status, error_type = _last_attempt(rollout, spans)
    if attempt_id is None:
        return AdapterResult(None, dropped="no_spans")
    mine = sorted((s for s in spans if s.attempt_id == attempt_id), key=lambda s: s.sequence_id)
    attempt_ids = {s.attempt_id for s in spans if s.attempt_id is not None}
    if rollout.attempts:
        attempt_ids |= {a.attempt_id for a in rollout.attempts}
    result = AdapterResult(
        None,
        earlier_attempts=len(attempt_ids - {attempt_id}),
        earlier_attempt_spans=sum(1 for s in spans if s.attempt_id is not None and s.attempt_id != attempt_id),
    )
    if error_type is None and status in (AttemptStatus.FAILED, None):
        error_type = _uncaught_exception(mine)

    calls = [s for s in mine if _is_gateway_call(s)]
    by_id = {s.span_id: s for s in spans}
    scopes = [s for s in mine if _attr(s, semconv.GEN_AI_OPERATION) == semconv.OP_INVOKE_AGENT and _agent_attr(s)]
    kept: dict[int, Transition] = {}  # call position -> transition
    for position, call in enumerate(calls):
        transition, reason = _transition(call, by_id, scopes, config)
        if transition is None:
            result.transitions_dropped[reason or "unknown"] += 1
        else:
            kept[position] = transition

    final: RewardRecord | None = None
    tool_call_owner = {cid: pos for pos, call in enumerate(calls) for cid in _requested_tool_call_ids(call)}
    place = _placer(calls, config)
    kept_positions = sorted(kept)
    for span in mine:
        if _is_gateway_call(span):
            continue
        position = place(span)
        if span.name == semconv.SPAN_REWARD:
            reward = _reward(span)
            if reward is None:
                result.rewards_invalid += 1
            elif reward.final:
                final = reward  # the last final reward wins (spans are in sequence order)
            else:
                # A reward is part of the return: credit the nearest kept call at or before it.
                at = bisect.bisect_right(kept_positions, position) - 1
                if at < 0:
                    result.rewards_unattributed += 1
                else:
                    kept[kept_positions[at]].rewards.append(reward)
            continue
        owner = position
        if _attr(span, semconv.GEN_AI_OPERATION) == semconv.OP_EXECUTE_TOOL:
            call_id = _attr(span, semconv.GEN_AI_TOOL_CALL_ID)
            matched_by: Literal["call_id", "order"] = "order"
            if isinstance(call_id, str) and call_id in tool_call_owner:
                owner, matched_by = tool_call_owner[call_id], "call_id"
            if owner in kept:
                kept[owner].tool_outcomes.append(_tool_outcome(span, matched_by))
        elif span.name == semconv.SPAN_EXCEPTION and owner in kept:
            kept[owner].exceptions.append(str(_attr(span, semconv.EXCEPTION_TYPE) or "Exception"))
        if owner in kept:
            kept[owner].signal_span_ids.append(span.span_id)

    transitions = [kept[p] for p in kept_positions]
    for index, transition in enumerate(transitions):
        transition.index = index
    result.episode = Episode(
        rollout_id=rollout.rollout_id,
        attempt_id=attempt_id,
        group_id=rollout.group_id,
        attempt_status=status,
        transitions=transitions,
        final_reward=final,
        rollout_reward=rollout.reward,
        uncaught_exception=error_type,
        spans=mine,
    )
    return result


# -- the last attempt ----------------------------------------------------------------------------


def _last_attempt(rollout: Rollout, spans: Sequence[Span]) -> tuple[str | None, AttemptStatus | None, str | None]:
    """(attempt id, its status, the type of the exception that ended it) of the rollout's last attempt."""
    if rollout.attempts:
        last = max(rollout.attempts, key=lambda a: a.number)
        return last.attempt_id, last.status, last.error.type if last.error else None
    numbered: dict[str, int] = {}
    latest: dict[str, int] = {}
    for s in spans:
        if s.attempt_id is None:
            continue
        latest[s.attempt_id] = max(latest.get(s.attempt_id, 0), s.start_time_ns)
        number = s.attributes.get(semconv.ATTEMPT_NUMBER)
        if s.name == semconv.SPAN_ATTEMPT and isinstance(number, int):
            numbered[s.attempt_id] = number
    if numbered:
        attempt_id = max(numbered, key=lambda a: numbered[a])
    elif latest:
        attempt_id = max(latest, key=lambda a: latest[a])
    else:
        return None, None, None
    status = AttemptStatus.SUCCEEDED if rollout.status is RolloutStatus.SUCCEEDED else None
    return attempt_id, status, None


def _uncaught_exception(spans: Sequence[Span]) -> str | None:
    """The exception the worker recorded on the attempt's root span, if the agent raised."""
    for s in spans:
        if s.name == semconv.SPAN_ATTEMPT:
            for event in s.events:
                if event.name == semconv.EXCEPTION_EVENT:
                    return str(event.attributes.get(semconv.EXCEPTION_TYPE) or "Exception")
    return None


# -- LLM calls -----------------------------------------------------------------------------------


def _is_gateway_call(span: Span) -> bool:
    return _attr(span, semconv.GEN_AI_OPERATION) in semconv.LLM_OPERATIONS and any(
        k.startswith(semconv.LLM_PREFIX) for k in span.attributes
    )


def _transition(
    call: Span, by_id: dict[str, Span], scopes: list[Span], config: AdapterConfig
) -> tuple[Transition | None, str | None]:
    """The call as a transition, or (None, why it is dropped)."""
    if _attr(call, semconv.LLM_FIXED) is True:
        return None, "fixed_model"
    models = [m for m in (_attr(call, semconv.GEN_AI_REQUEST_MODEL), _attr(call, semconv.GEN_AI_RESPONSE_MODEL)) if m]
    if config.models is not None and not any(_matches(str(m), config.models) for m in models):
        return None, "model_filtered"
    agent, source = _agent_of(call, by_id, scopes)
    if config.agents is not None and (agent is None or not _matches(agent, config.agents)):
        return None, "agent_filtered"
    prompt = _int_list(_attr(call, semconv.LLM_PROMPT_TOKEN_IDS))
    response = _int_list(_attr(call, semconv.LLM_RESPONSE_TOKEN_IDS))
    if prompt is None or response is None or not prompt:
        return None, "missing_token_ids"
    raw_logprobs = _attr(call, semconv.LLM_RESPONSE_LOGPROBS)
    if not isinstance(raw_logprobs, (list, tuple)):
        return None, "missing_logprobs"
    if len(raw_logprobs) != len(response):
        return None, "logprob_mismatch"
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in raw_logprobs):
        return None, "bad_logprobs"
    if not response:
        return None, "empty_response"
    token_source = str(_attr(call, semconv.LLM_TOKEN_SOURCE) or "engine")
    if config.drop_retokenized and token_source != "engine":
        return None, "retokenized"
    if config.max_prompt_tokens is not None and len(prompt) > config.max_prompt_tokens:
        return None, "prompt_too_long"
    if config.max_response_tokens is not None and len(response) > config.max_response_tokens:
        return None, "response_too_long"
    version = _attr(call, semconv.LLM_MODEL_VERSION)
    temperature = _attr(call, semconv.GEN_AI_REQUEST_TEMPERATURE)
    if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or temperature <= 0:
        temperature = 1.0  # unset means the engine's default of 1; greedy logprobs are taken at 1
    reasons = _attr(call, semconv.GEN_AI_RESPONSE_FINISH_REASONS)
    finish = reasons[0] if isinstance(reasons, (list, tuple)) and reasons else reasons
    transition = Transition(
        rollout_id=call.rollout_id or "",
        attempt_id=call.attempt_id or "",
        index=0,  # renumbered once the episode's transitions are known
        span_id=call.span_id,
        sequence_id=call.sequence_id,
        prompt_token_ids=prompt,
        response_token_ids=response,
        logprobs=[float(x) for x in raw_logprobs],
        temperature=float(temperature),
        model=str(models[-1]) if models else None,
        model_version=version if isinstance(version, int) and not isinstance(version, bool) else None,
        agent_name=agent,
        agent_source=source,
        finish_reason=str(finish) if finish else None,
        token_source=token_source,
        tool_calls_requested=len(_requested_tool_call_ids(call, count_unnamed=True)),
        tool_call_malformed=_attr(call, semconv.LLM_TOOL_CALL_MALFORMED) is True,
    )
    return transition, None


def _agent_of(call: Span, by_id: dict[str, Span], scopes: list[Span]) -> tuple[str | None, AgentSource | None]:
    """The agent that made the call, and which rule said so (see the module doc)."""
    header = _attr(call, semconv.LLM_AGENT_NAME)
    if isinstance(header, str) and header:
        return header, "header"
    seen = {call.span_id}
    parent = by_id.get(call.parent_id) if call.parent_id else None
    while parent is not None and parent.span_id not in seen:
        seen.add(parent.span_id)
        name = _agent_attr(parent)
        if name:
            return name, "parent"
        parent = by_id.get(parent.parent_id) if parent.parent_id else None
    containing = [s for s in scopes if s.start_time_ns <= call.start_time_ns <= s.end_time_ns]
    if containing:
        # Innermost: the latest to start; among equal starts, the shortest.
        inner = max(containing, key=lambda s: (s.start_time_ns, -s.end_time_ns))
        return _agent_attr(inner), "time"
    return None, None


def _requested_tool_call_ids(call: Span, count_unnamed: bool = False) -> list[str]:
    """Ids of the tool calls the response asked for (from the gateway's JSON), '' for unnamed ones."""
    raw = _attr(call, semconv.LLM_TOOL_CALLS)
    try:
        parsed = json.loads(raw) if isinstance(raw, str) else None
    except ValueError:
        return []
    if not isinstance(parsed, list):
        return []
    ids = [str(c.get("id") or "") if isinstance(c, dict) else "" for c in parsed]
    return ids if count_unnamed else [i for i in ids if i]


# -- client signals ------------------------------------------------------------------------------


def _placer(calls: list[Span], config: AdapterConfig) -> Any:
    """A function: client span -> position of the last LLM call before it (-1 if none)."""
    if config.signal_order == "clock":
        ends = [c.end_time_ns for c in calls]
        # Calls are in sequence order; their end times need not be sorted, so scan.
        return lambda s: max((i for i, e in enumerate(ends) if e <= s.start_time_ns), default=-1)
    seqs = [c.sequence_id for c in calls]
    return lambda s: bisect.bisect_left(seqs, s.sequence_id) - 1


def _tool_outcome(span: Span, matched_by: Literal["call_id", "order"]) -> ToolOutcome:
    success = _attr(span, semconv.TOOL_SUCCESS)
    if not isinstance(success, bool):
        success = span.status.code is not SpanStatusCode.ERROR
    call_id = _attr(span, semconv.GEN_AI_TOOL_CALL_ID)
    name = _attr(span, semconv.GEN_AI_TOOL_NAME)
    return ToolOutcome(
        name=str(name) if name is not None else None,
        call_id=str(call_id) if call_id is not None else None,
        success=success,
        error=None if success else (span.status.message or None),
        matched_by=matched_by,
    )


def _reward(span: Span) -> RewardRecord | None:
    """The reward span's record, or None when it holds no usable finite number."""
    value = _attr(span, semconv.REWARD_VALUE)
    raw_dims = _attr(span, semconv.REWARD_DIMENSIONS)
    dimensions: dict[str, float] = {}
    if raw_dims is not None:
        try:
            parsed = json.loads(raw_dims) if isinstance(raw_dims, str) else raw_dims
            dimensions = {str(k): float(v) for k, v in dict(parsed).items()}
        except (ValueError, TypeError):
            return None
    if not _finite_number(value):
        value = None
    if value is None and not dimensions:
        return None
    if not all(math.isfinite(v) for v in dimensions.values()):
        return None
    primary = _attr(span, semconv.REWARD_PRIMARY)
    final = _attr(span, semconv.REWARD_FINAL)
    return RewardRecord(
        value=float(value) if value is not None else None,
        dimensions=dimensions,
        primary=str(primary) if primary is not None else None,
        final=final if isinstance(final, bool) else True,
        sequence_id=span.sequence_id,
    )


# -- attribute helpers ---------------------------------------------------------------------------


def _attr(span: Span, key: str) -> Any:
    return span.attributes.get(key)


def _agent_attr(span: Span) -> str | None:
    name = span.attributes.get(semconv.GEN_AI_AGENT_NAME)
    return name if isinstance(name, str) and name else None


def _matches(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatchcase(name, p) for p in patterns)


def _finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _int_list(value: Any) -> list[int] | None:
    if not isinstance(value, (list, tuple)):
        return None
    if not all(isinstance(x, int) and not isinstance(x, bool) for x in value):
        return None
    return list(value)
