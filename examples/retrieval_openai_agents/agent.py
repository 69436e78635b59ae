"""A retrieval agent with the OpenAI Agents SDK: it searches a local corpus with a tool, then answers.

The only agentbolt-specific line is the ``model=`` of the ``Agent``; the reward is F1 of the answer plus
a format term (see reward.py). The run's input starts with one worked example in the SDK's own input items
(a question, a ``search_documents`` call, its result, the answer line): the agent's own prompt, as its
instructions are. A 135M model does not call a tool from instructions alone.
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


# One solved question as earlier input items. Its document is not in the corpus, so the example teaches the
# steps (search, read, answer in one line), not an answer to any question the agent is asked.
WORKED_EXAMPLE: list[dict[str, Any]] = [
    {"role": "user", "content": "Which river flows through Paris?"},
    {
        "type": "function_call",
        "call_id": "call_example",
        "name": "search_documents",
        "arguments": json.dumps({"query": "river Paris"}),
    },
    {
        "type": "function_call_output",
        "call_id": "call_example",
        "output": json.dumps(
            [{"id": "x1", "title": "The Seine", "text": "The Seine flows through Paris into the English Channel."}]
        ),
    },
    {"role": "assistant", "content": "Answer: the Seine"},
]


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
        question = {"role": "user", "content": str(task["question"])}
        result = await Runner.run(agent, [*WORKED_EXAMPLE, question], max_turns=MAX_TURNS)  # type: ignore[list-item]
        output = str(result.final_output) if result.final_output is not None else None
    except MaxTurnsExceeded as exc:  # a model that keeps calling tools gets no answer in: reward 0
        agentbolt.emit_exception(exc)
        output = None
    agentbolt.emit_reward(answer_reward(output, task["answer"]), primary="total")
