"""LangChain / LangGraph: a ``ChatOpenAI`` on the rollout's gateway, and tool calls as agentbolt spans.

Lines a user changes in an existing LangChain/LangGraph agent::

    model = agentbolt.integrations.langchain.chat_model(llm, agent="writer")   # was ChatOpenAI(model=...)
    graph.invoke(state, config={"callbacks": agentbolt.integrations.langchain.callbacks()})

Install with ``pip install 'agentbolt[langchain]'``.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any
from uuid import UUID

from opentelemetry.trace import Span, Status, StatusCode

from agentbolt import semconv
from agentbolt.client.emit import attribute_value
from agentbolt.client.tracing import tracer
from agentbolt.integrations import agent_headers, require
from agentbolt.types import LLM

if TYPE_CHECKING:
    from langchain_core.callbacks import BaseCallbackHandler
    from langchain_openai import ChatOpenAI

EXTRA = "langchain"


def chat_model(llm: LLM, agent: str | None = None, **kwargs: Any) -> ChatOpenAI:
    """A ``ChatOpenAI`` that calls the policy model through the rollout's gateway.

    Args:
        llm: the ``llm`` the agent function was given.
        agent: the agent's name (sent as ``X-Agentbolt-Agent``), used to select which agents train.
        kwargs: any other ``ChatOpenAI`` argument (temperature, max_tokens, ...).
        model: keyword; the served model to call: default ``llm.model`` (the policy), or the name of one of
            the gateway's fixed models (``fixed_models`` in the train config) for an agent that stays fixed.

    Raises:
        ImportError: ``langchain-openai`` is not installed.
    """
    langchain_openai = require("langchain_openai", EXTRA)
    headers = {**(kwargs.pop("default_headers", None) or {}), **agent_headers(agent)}
    return langchain_openai.ChatOpenAI(
        model=kwargs.pop("model", None) or llm.model,
        base_url=llm.base_url,
        api_key=llm.api_key,
        default_headers=headers or None,
        **kwargs,
    )


def callbacks() -> list[BaseCallbackHandler]:
    """Callbacks to pass in a run's config: every tool the agent runs becomes an agentbolt tool-call span."""
    return [_handler_class()()]


_HANDLER: type[Any] | None = None


def _handler_class() -> type[Any]:
    """The callback handler class, built on first use so this module imports without LangChain."""
    global _HANDLER
    if _HANDLER is not None:
        return _HANDLER
    base = require("langchain_core.callbacks", EXTRA).BaseCallbackHandler

    class ToolSpanHandler(base):  # type: ignore[misc, valid-type]
        """Opens a tool-call span on ``on_tool_start`` and closes it on ``on_tool_end``/``on_tool_error``."""

        # Run in the caller's thread and context (not an executor), so spans land in the right attempt.
        run_inline = True
        raise_error = False

        def __init__(self) -> None:
            super().__init__()
            self._spans: dict[UUID, Span] = {}
            self._lock = threading.Lock()

        def on_tool_start(
            self,
            serialized: dict[str, Any] | None,
            input_str: str,
            *,
            run_id: UUID,
            inputs: dict[str, Any] | None = None,
            **kwargs: Any,
        ) -> None:
            name = (serialized or {}).get("name") or kwargs.get("name") or "tool"
            attributes: dict[str, Any] = {
                semconv.GEN_AI_OPERATION: semconv.OP_EXECUTE_TOOL,
                semconv.GEN_AI_TOOL_NAME: name,
                semconv.TOOL_ARGUMENTS: attribute_value(inputs if inputs is not None else input_str),
            }
            tool_call_id = (kwargs.get("metadata") or {}).get("tool_call_id")
            if tool_call_id:
                attributes[semconv.GEN_AI_TOOL_CALL_ID] = str(tool_call_id)
            span = tracer().start_span(f"{semconv.OP_EXECUTE_TOOL} {name}", attributes=attributes)
            with self._lock:
                self._spans[run_id] = span

        def on_tool_end(self, output: Any, *, run_id: UUID, **kwargs: Any) -> None:
            span = self._pop(run_id)
            if span is None:
                return
            # A tool that handles its own error returns a ToolMessage with status "error".
            content = getattr(output, "content", output)
            span.set_attribute(semconv.TOOL_RESULT, attribute_value(content))
            if getattr(output, "status", None) == "error":
                span.set_attribute(semconv.TOOL_SUCCESS, False)
                span.set_status(Status(StatusCode.ERROR, str(content)[:500]))
            else:
                span.set_attribute(semconv.TOOL_SUCCESS, True)
            span.end()

        def on_tool_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
            span = self._pop(run_id)
            if span is None:
                return
            span.record_exception(error)
            span.set_attribute(semconv.TOOL_SUCCESS, False)
            span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
            span.end()

        def _pop(self, run_id: UUID) -> Span | None:
            with self._lock:
                return self._spans.pop(run_id, None)

    _HANDLER = ToolSpanHandler
    return _HANDLER


__all__ = ["callbacks", "chat_model"]
