"""AutoGen AgentChat: an ``OpenAIChatCompletionClient`` on the rollout's gateway, and tools whose outcome is recorded.

AutoGen already writes OpenTelemetry spans with the GenAI conventions (``invoke_agent`` with
``gen_ai.agent.name``, ``execute_tool`` with ``gen_ai.tool.name``) to the global tracer provider, which the
agentbolt worker exports; :func:`tool` adds the tool's arguments, result and ``agentbolt.tool.success`` to
AutoGen's own ``execute_tool`` span.

Lines a user changes in an existing AgentChat agent::

    client = agentbolt.integrations.autogen.model_client(llm, agent="calculator")  # was OpenAIChatCompletionClient
    tools = [agentbolt.integrations.autogen.tool(calculate)]  # was [calculate] or FunctionTool(calculate, ...)

Install with ``pip install 'agentbolt[autogen]'``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from opentelemetry import trace

from agentbolt import semconv
from agentbolt.client.emit import attribute_value
from agentbolt.integrations import agent_headers, require
from agentbolt.types import LLM

if TYPE_CHECKING:
    from autogen_core.tools import FunctionTool
    from autogen_ext.models.openai import OpenAIChatCompletionClient

EXTRA = "autogen"

# What AutoGen needs to know of a model name it does not recognise. Tool calling goes through the gateway's
# text format, so the policy model "supports" it whatever its chat template.
DEFAULT_MODEL_INFO: dict[str, Any] = {
    "vision": False,
    "function_calling": True,
    "json_output": False,
    "structured_output": False,
    "family": "unknown",
    "multiple_system_messages": False,
}


def model_client(llm: LLM, agent: str | None = None, **kwargs: Any) -> OpenAIChatCompletionClient:
    """An ``OpenAIChatCompletionClient`` that calls the policy model through the rollout's gateway.

    Args:
        llm: the ``llm`` the agent function was given.
        agent: the agent's name (sent as ``X-Agentbolt-Agent``), used to select which agents train.
        kwargs: other client arguments (temperature, max_tokens, ``model_info`` to override the default...).
        model: keyword; the served model to call: default ``llm.model`` (the policy), or the name of one of
            the gateway's fixed models (``fixed_models`` in the train config) for an agent that stays fixed.

    Raises:
        ImportError: ``autogen-ext[openai]`` is not installed.
    """
    models = require("autogen_ext.models.openai", EXTRA)
    headers = {**(kwargs.pop("default_headers", None) or {}), **agent_headers(agent)}
    model_info = kwargs.pop("model_info", None) or dict(DEFAULT_MODEL_INFO)
    return models.OpenAIChatCompletionClient(
        model=kwargs.pop("model", None) or llm.model,
        base_url=llm.base_url,
        api_key=llm.api_key,
        model_info=model_info,
        default_headers=headers or None,
        **kwargs,
    )


def tool(func: Callable[..., Any], description: str | None = None, name: str | None = None) -> FunctionTool:
    """A ``FunctionTool`` over ``func`` that records its arguments, result and success on AutoGen's tool span.

    Args:
        func: the tool function (sync or async, type-annotated as AutoGen requires).
        description: what the model is told the tool does (default: the docstring's first paragraph).
        name: the tool's name (default: the function's).

    Raises:
        ImportError: ``autogen-core`` is not installed.
    """
    text = description or (func.__doc__ or "").strip().split("\n\n")[0] or (name or func.__name__)
    return _tool_class()(func, description=text, name=name)


_TOOL: type[Any] | None = None


def _tool_class() -> type[Any]:
    """The ``FunctionTool`` subclass, built on first use so this module imports without AutoGen."""
    global _TOOL
    if _TOOL is not None:
        return _TOOL
    base = require("autogen_core.tools", EXTRA).FunctionTool

    class RecordedFunctionTool(base):  # type: ignore[misc, valid-type]
        """``run`` executes inside AutoGen's ``execute_tool`` span (``BaseTool.run_json``): annotate that span."""

        async def run(self, args: Any, cancellation_token: Any) -> Any:
            span = trace.get_current_span()
            span.set_attribute(semconv.TOOL_ARGUMENTS, attribute_value(args.model_dump(mode="json")))
            try:
                result = await super().run(args, cancellation_token)
            except BaseException:
                span.set_attribute(semconv.TOOL_SUCCESS, False)
                raise
            span.set_attribute(semconv.TOOL_RESULT, attribute_value(self.return_value_as_string(result)))
            span.set_attribute(semconv.TOOL_SUCCESS, True)
            return result

    _TOOL = RecordedFunctionTool
    return _TOOL


__all__ = ["DEFAULT_MODEL_INFO", "model_client", "tool"]
