"""OpenAI Agents SDK: a chat-completions model on the rollout's gateway, and the SDK's trace as agentbolt spans.

Lines a user changes in an existing Agents SDK agent::

    agent = Agent(name="researcher", ..., model=agentbolt.integrations.openai_agents.model(llm, agent="researcher"))

``model`` also installs :class:`AgentboltTracingProcessor` in place of the SDK's default processors, so
traces are never exported to OpenAI's servers (a training run has no OpenAI key and sends nothing out),
and the SDK's agent and function-tool spans become agentbolt ``invoke_agent``/``execute_tool`` spans.

Install with ``pip install 'agentbolt[openai-agents]'``.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.trace import Span, Status, StatusCode

from agentbolt import semconv
from agentbolt.client.emit import attribute_value
from agentbolt.client.tracing import tracer
from agentbolt.integrations import agent_headers, require
from agentbolt.types import LLM

if TYPE_CHECKING:
    from agents import OpenAIChatCompletionsModel

EXTRA = "openai-agents"

_installed = False
_install_lock = threading.Lock()


def model(llm: LLM, agent: str | None = None, **client_kwargs: Any) -> OpenAIChatCompletionsModel:
    """An ``OpenAIChatCompletionsModel`` over an ``AsyncOpenAI`` client on the rollout's gateway.

    The gateway serves chat completions (not the Responses API), which is why this is the
    chat-completions model. Calls :func:`install_tracing` once.

    Args:
        llm: the ``llm`` the agent function was given.
        agent: the agent's name (sent as ``X-Agentbolt-Agent``), used to select which agents train.
        client_kwargs: other ``AsyncOpenAI`` arguments (timeout, max_retries, ...).
        model: keyword; the served model to call: default ``llm.model`` (the policy), or the name of one of
            the gateway's fixed models (``fixed_models`` in the train config) for an agent that stays fixed.

    Raises:
        ImportError: ``openai-agents`` is not installed.
    """
    agents = require("agents", EXTRA)
    openai = require("openai", EXTRA)
    install_tracing()
    headers = {**(client_kwargs.pop("default_headers", None) or {}), **agent_headers(agent)}
    served = client_kwargs.pop("model", None) or llm.model
    client = openai.AsyncOpenAI(
        base_url=llm.base_url, api_key=llm.api_key, default_headers=headers or None, **client_kwargs
    )
    return agents.OpenAIChatCompletionsModel(model=served, openai_client=client)


def install_tracing() -> None:
    """Replace the SDK's trace processors (its exporter to OpenAI's servers) with agentbolt's, once per process."""
    global _installed
    agents = require("agents", EXTRA)
    with _install_lock:
        if _installed:
            return
        agents.set_trace_processors([_processor_class()()])
        _installed = True


_PROCESSOR: type[Any] | None = None


def _processor_class() -> type[Any]:
    """The tracing processor class, built on first use so this module imports without the SDK."""
    global _PROCESSOR
    if _PROCESSOR is not None:
        return _PROCESSOR
    tracing = require("agents.tracing", EXTRA)

    class AgentboltTracingProcessor(tracing.TracingProcessor):  # type: ignore[name-defined]
        """Mirrors the SDK's agent and function spans as OpenTelemetry spans with agentbolt's keys.

        The SDK calls ``on_span_start``/``on_span_end`` synchronously in the agent's own task, so the
        OpenTelemetry spans start in the attempt's context and are attributed to it.
        """

        def __init__(self) -> None:
            self._spans: dict[str, Span] = {}  # open mirrored spans by SDK span id
            self._nearest: dict[str, Span] = {}  # SDK span id -> its nearest open mirrored span
            self._lock = threading.Lock()

        def on_trace_start(self, trace_: Any) -> None:
            pass

        def on_trace_end(self, trace_: Any) -> None:
            pass

        def on_span_start(self, span: Any) -> None:
            data = span.span_data
            with self._lock:
                # The nearest mirrored ancestor: SDK spans we skip (turns, generations) pass their parent on.
                parent = self._nearest.get(span.parent_id) if span.parent_id else None
            if isinstance(data, tracing.AgentSpanData):
                name = f"{semconv.OP_INVOKE_AGENT} {data.name}"
                attributes: dict[str, Any] = {
                    semconv.GEN_AI_OPERATION: semconv.OP_INVOKE_AGENT,
                    semconv.GEN_AI_AGENT_NAME: data.name,
                }
            elif isinstance(data, tracing.FunctionSpanData):
                name = f"{semconv.OP_EXECUTE_TOOL} {data.name}"
                attributes = {semconv.GEN_AI_OPERATION: semconv.OP_EXECUTE_TOOL, semconv.GEN_AI_TOOL_NAME: data.name}
                if data.input is not None:
                    attributes[semconv.TOOL_ARGUMENTS] = attribute_value(data.input)
            else:
                # Generations are recorded by the gateway; other SDK spans carry no training signal.
                if parent is not None:
                    with self._lock:
                        self._nearest[span.span_id] = parent
                return
            context = trace.set_span_in_context(parent) if parent is not None else None
            otel_span = tracer().start_span(name, context=context, attributes=attributes)
            with self._lock:
                self._spans[span.span_id] = otel_span
                self._nearest[span.span_id] = otel_span

        def on_span_end(self, span: Any) -> None:
            with self._lock:
                otel_span = self._spans.pop(span.span_id, None)
                self._nearest.pop(span.span_id, None)
            if otel_span is None:
                return
            data = span.span_data
            error = span.error
            if isinstance(data, tracing.FunctionSpanData):
                if data.output is not None:
                    otel_span.set_attribute(semconv.TOOL_RESULT, attribute_value(str(data.output)))
                otel_span.set_attribute(semconv.TOOL_SUCCESS, error is None)
            if error is not None:
                detail = (error.get("data") or {}).get("error") if isinstance(error, dict) else None
                message = error.get("message", "error") if isinstance(error, dict) else str(error)
                otel_span.set_status(Status(StatusCode.ERROR, f"{message}: {detail}" if detail else message))
            otel_span.end()

        def shutdown(self) -> None:
            with self._lock:
                spans, self._spans, self._nearest = list(self._spans.values()), {}, {}
            for otel_span in spans:
                otel_span.end()

        def force_flush(self) -> None:
            pass

    _PROCESSOR = AgentboltTracingProcessor
    return _PROCESSOR


__all__ = ["install_tracing", "model"]
