"""A retrieval agent with the OpenAI Agents SDK: it searches a local corpus with a tool, then answers.

The only agentbolt-specific line is the ``model=`` of the ``Agent``; the reward is F1 of the answer plus
a format term (see reward.py).
"""

from __future__ import annotations

import json
from typing import Any

from agents import Agent, Runner, function_tool

import agentbolt
from agentbolt.integrations import openai_agents as ab_agents
from examples.retrieval_openai_agents.retriever import search
from examples.retrieval_openai_agents.reward import answer_reward

MAX_TURNS = 4
MAX_TOKENS = 128

INSTRUCTIONS = (
    "Answer the user's question from the documents. First call the search tool with a short query; "
    "then reply with one line: 'Answer: <the answer in a few words>'."
)


@function_tool
def search_documents(query: str) -> str:
    """Search the document collection; returns the best matching documents as JSON."""
    return json.dumps(search(query))


def build_agent(llm: agentbolt.LLM, temperature: float = 1.0) -> Agent[Any]:
    from agents import ModelSettings

    return Agent(
        name="researcher",
        instructions=INSTRUCTIONS,
        tools=[search_documents],
        model=ab_agents.model(llm, agent="researcher"),
        model_settings=ModelSettings(max_tokens=MAX_TOKENS, temperature=temperature),
    )


@agentbolt.rollout
async def retrieval_agent(task: dict[str, Any], llm: agentbolt.LLM) -> None:
    """One rollout: answer ``task["question"]``; reports the reward's dimensions (primary: ``total``).

    ``task["temperature"]`` (optional, default 1.0) is the sampling temperature (0 in validation).
    """
    from agents.exceptions import MaxTurnsExceeded

    try:
        agent = build_agent(llm, float(task.get("temperature", 1.0)))
        result = await Runner.run(agent, task["question"], max_turns=MAX_TURNS)
        output = str(result.final_output) if result.final_output is not None else None
    except MaxTurnsExceeded as exc:  # a model that keeps calling tools gets no answer in: reward 0
        agentbolt.emit_exception(exc)
        output = None
    agentbolt.emit_reward(answer_reward(output, task["answer"]), primary="total")
