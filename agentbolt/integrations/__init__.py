"""Helpers that point agent frameworks at the rollout's gateway and make their agents and tools visible.

One small module per framework, each importing its framework lazily, so ``agentbolt.integrations``
imports without any framework installed:

* :mod:`agentbolt.integrations.langchain` — LangChain / LangGraph: ``chat_model``, ``callbacks``.
* :mod:`agentbolt.integrations.openai_agents` — OpenAI Agents SDK: ``model``, ``install_tracing``.
* :mod:`agentbolt.integrations.autogen` — AutoGen AgentChat: ``model_client``, ``tool``.
* :mod:`agentbolt.integrations.crewai` — CrewAI: ``llm``.

Every model helper takes the rollout's :class:`~agentbolt.types.LLM` and an optional agent name. The name
travels in the ``X-Agentbolt-Agent`` header, so the gateway records which agent made each call and
training can select agents by name (``rl.adapter.agents``).
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Callable
from types import ModuleType
from typing import Any, TypeVar

from agentbolt.client.emit import tool_call

AGENT_HEADER = "X-Agentbolt-Agent"

F = TypeVar("F", bound=Callable[..., Any])


def agent_headers(agent: str | None) -> dict[str, str]:
    """The headers that name ``agent`` to the gateway (none when ``agent`` is None).

    Raises:
        ValueError: an empty name, or one that cannot travel in an HTTP header.
    """
    if agent is None:
        return {}
    if not agent.strip() or not agent.isprintable() or not agent.isascii():
        raise ValueError(f"agent name {agent!r} must be non-empty printable ASCII (it travels in an HTTP header)")
    return {AGENT_HEADER: agent}


def require(module: str, extra: str) -> ModuleType:
    """Import ``module`` or raise an ImportError saying which agentbolt extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"this agentbolt integration needs {module!r}: pip install 'agentbolt[{extra}]' ({exc})"
        ) from exc


def traced_tool(fn: F | None = None, *, name: str | None = None) -> Any:
    """Decorate a tool function so each call is an agentbolt tool-call span (success or failure: AIR).

    Works under any framework's own tool decorator (``@tool``, ``@function_tool``...): the wrapper keeps
    the function's name, docstring and signature. An exception marks the call failed and propagates
    to the framework, which usually shows it to the model. Sync and async functions are both supported.
    """

    def wrap(func: F) -> F:
        tool_name = name or func.__name__
        signature = inspect.signature(func)

        def arguments(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
            try:
                bound = signature.bind(*args, **kwargs)
            except TypeError:
                return {"args": list(args), **kwargs}
            return dict(bound.arguments)

        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                with tool_call(tool_name, arguments(args, kwargs)) as call:
                    result = await func(*args, **kwargs)
                    call.set_result(result)
                    return result

            return run_async  # type: ignore[return-value]

        @functools.wraps(func)
        def run(*args: Any, **kwargs: Any) -> Any:
            with tool_call(tool_name, arguments(args, kwargs)) as call:
                result = func(*args, **kwargs)
                call.set_result(result)
                return result

        return run  # type: ignore[return-value]

    return wrap(fn) if fn is not None else wrap


__all__ = ["AGENT_HEADER", "agent_headers", "require", "traced_tool"]
