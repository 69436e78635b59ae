"""The LLM-call spans of one gateway call: one span per choice, the contract the adapter reads.

The attribute keys are :mod:`agentbolt.semconv`'s (its LLM-call section documents each one): the GenAI
conventions' ``gen_ai.*`` keys, and ``agentbolt.llm.*`` for what RL needs (exact prompt and response token
ids, logprobs, model version) and the call's signals (tool calls, fidelity, agent, fixed model). The
choices of one call share ``gen_ai.response.id`` and are stored in one transaction.
"""

from __future__ import annotations

import json
import os
from typing import Any

from agentbolt import semconv
from agentbolt.gateway.call import Choice, Prepared
from agentbolt.types import ChatCompletionRequest, CompletionRequest, SpanIn, SpanStatus, SpanStatusCode

_RESOURCE = {semconv.SERVICE_NAME: "agentbolt-gateway"}
_SCOPE = "agentbolt.gateway"


def request_attributes(req: ChatCompletionRequest | CompletionRequest, max_new_tokens: int) -> dict[str, Any]:
    """The request's sampling parameters as span attributes (those it set; max_tokens as it will run)."""
    params: dict[str, Any] = {semconv.GEN_AI_REQUEST_MAX_TOKENS: max_new_tokens}
    if req.temperature is not None:
        params[semconv.GEN_AI_REQUEST_TEMPERATURE] = req.temperature
    if req.top_p is not None:
        params[semconv.GEN_AI_REQUEST_TOP_P] = req.top_p
    if req.seed is not None:
        params[semconv.GEN_AI_REQUEST_SEED] = req.seed
    return params


def llm_call_spans(call: Prepared, choices: list[Choice], ended_ns: int) -> list[SpanIn]:
    """One CLIENT span per choice of ``call``, from its arrival to ``ended_ns`` (generation done).

    Spans are built with ``model_construct``: every value comes from the gateway itself, already valid.
    """
    context = call.context
    model_name = call.served.backend.model_name
    input_json = json.dumps(call.input_messages, ensure_ascii=False)
    shared: dict[str, Any] = {
        semconv.GEN_AI_OPERATION: call.operation,
        semconv.GEN_AI_SYSTEM: call.served.system,
        semconv.GEN_AI_REQUEST_MODEL: call.request_model,
        **call.span_params,
        semconv.GEN_AI_RESPONSE_ID: call.response_id,
        semconv.GEN_AI_RESPONSE_MODEL: model_name,
    }
    latency_s = (ended_ns - context.received_ns) / 1e9
    return [
        SpanIn.model_construct(
            rollout_id=context.rollout_id,
            attempt_id=context.attempt_id,
            trace_id=context.trace_id,
            span_id=os.urandom(8).hex(),
            parent_id=context.parent_id,
            name=f"{call.operation} {model_name}",
            kind="CLIENT",
            start_time_ns=context.received_ns,
            end_time_ns=ended_ns,
            attributes=_choice_attributes(call, choice, shared, input_json, latency_s),
            events=[],
            links=[],
            status=SpanStatus(code=SpanStatusCode.OK),
            resource=dict(_RESOURCE),
            scope=_SCOPE,
        )
        for choice in choices
    ]


def _choice_attributes(
    call: Prepared, c: Choice, shared: dict[str, Any], input_json: str, latency_s: float
) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        **shared,
        semconv.GEN_AI_RESPONSE_FINISH_REASONS: [c.finish_reason],
        semconv.GEN_AI_USAGE_INPUT_TOKENS: len(call.prompt_ids),
        semconv.GEN_AI_USAGE_OUTPUT_TOKENS: len(c.token_ids),
        semconv.GEN_AI_INPUT_MESSAGES: input_json,
        semconv.GEN_AI_OUTPUT_MESSAGES: json.dumps([c.message()], ensure_ascii=False),
        semconv.LLM_PROMPT_TOKEN_IDS: call.prompt_ids,
        semconv.LLM_RESPONSE_TOKEN_IDS: c.token_ids,
        semconv.LLM_RESPONSE_LOGPROBS: c.logprobs,
        semconv.LLM_MODEL_VERSION: c.result.model_version,
        semconv.LLM_TOKEN_SOURCE: c.result.token_source,
        semconv.LLM_CHOICE_INDEX: c.index,
        semconv.LLM_LATENCY_S: latency_s,
        semconv.LLM_STREAM: call.stream,
    }
    if c.result.token_drift is not None:
        attributes[semconv.LLM_TOKEN_DRIFT] = c.result.token_drift
    if call.tools:
        attributes[semconv.LLM_TOOL_CALL_MALFORMED] = c.malformed is not None
    if c.tool_calls:
        attributes[semconv.LLM_TOOL_CALLS] = json.dumps(c.tool_calls, ensure_ascii=False)
    if c.malformed is not None:
        attributes[semconv.LLM_TOOL_CALL_ERROR] = c.malformed
    if call.context.agent_name:
        attributes[semconv.LLM_AGENT_NAME] = call.context.agent_name
    if call.fidelity_mismatch is not None:
        attributes[semconv.LLM_FIDELITY_MISMATCH] = call.fidelity_mismatch
    if call.served.fixed:
        attributes[semconv.LLM_FIXED] = True
    return attributes
