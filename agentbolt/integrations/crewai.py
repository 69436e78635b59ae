"""CrewAI: a native OpenAI ``LLM`` on the rollout's gateway, one per agent name.

CrewAI routes ``provider="openai"`` to its native OpenAI SDK client (no LiteLLM). Tool outcomes are
recorded by wrapping the tool function in :func:`agentbolt.integrations.traced_tool` under CrewAI's ``@tool``
(CrewAI runs tools in the crew's own thread, so the span lands in the right attempt).

Lines a user changes in an existing crew::

    Agent(role="Researcher", ..., llm=agentbolt.integrations.crewai.llm(llm, agent="researcher"))
    @tool("lookup") @agentbolt.integrations.traced_tool def lookup(...)   # to record tool success/failure

Importing this module sets ``CREWAI_DISABLE_TELEMETRY=true`` unless it is set, so import it *before*
``crewai``: CrewAI's telemetry installs its own global OpenTelemetry provider exporting to CrewAI's service
when crewai is imported, and the agentbolt worker would then add its processors to that provider — every
rollout span would also be sent to CrewAI.

Install with ``pip install 'agentbolt[crewai]'``.
"""

from __future__ import annotations

import os
from typing import Any

from agentbolt.integrations import agent_headers, require
from agentbolt.types import LLM

EXTRA = "crewai"

# Before crewai is imported (see the module docstring): no rollout span may go to CrewAI's telemetry.
os.environ.setdefault("CREWAI_DISABLE_TELEMETRY", "true")


def llm(llm: LLM, agent: str | None = None, **kwargs: Any) -> Any:
    """A CrewAI ``LLM`` (native OpenAI provider) that calls the policy model through the rollout's gateway.

    Args:
        llm: the ``llm`` the agent function was given.
        agent: the agent's name (sent as ``X-Agentbolt-Agent``), used to select which agents train. Give each
            CrewAI agent its own ``LLM``; an agent whose name the training config does not select still runs
            on the same gateway (on the policy's current weights unless ``model`` names a fixed model) but
            never trains.
        kwargs: other ``crewai.LLM`` arguments (temperature, max_tokens, ...).
        model: keyword; the served model to call: default ``llm.model`` (the policy), or the name of one of
            the gateway's fixed models (``fixed_models`` in the train config) for an agent that stays fixed.

    Raises:
        ImportError: ``crewai`` is not installed.
    """
    crewai = require("crewai", EXTRA)
    headers = {**(kwargs.pop("default_headers", None) or {}), **agent_headers(agent)}
    return crewai.LLM(
        model=kwargs.pop("model", None) or llm.model,
        provider="openai",
        base_url=llm.base_url,
        api_key=llm.api_key,
        default_headers=headers or None,
        **kwargs,
    )


__all__ = ["llm"]
