"""A calculator agent with AutoGen AgentChat: one AssistantAgent with a calculator tool, exact-match reward.

Tasks are arithmetic word problems generated from a seed by ``examples.calculator.tasks.make_tasks``; the
tool is the safe evaluator of ``examples.calculator.calculator``.
"""

from __future__ import annotations

import re
from typing import Any

from autogen_agentchat.agents import AssistantAgent

import agentbolt
from agentbolt.integrations import autogen as ab_autogen
from examples.calculator.calculator import evaluate

MAX_TOKENS = 128
SYSTEM = (
    "You solve arithmetic word problems. Call the calculate tool with the arithmetic expression, "
    "then reply with the final number."
)
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def calculate(expression: str) -> str:
    """Evaluate an arithmetic expression such as '12 + 7 * (3 - 1)'."""
    return str(evaluate(expression))


def final_number(text: str) -> float | None:
    """The last number in ``text``, or None."""
    numbers = _NUMBER.findall(text.replace(",", ""))
    return float(numbers[-1]) if numbers else None


@agentbolt.rollout
async def calculator_agent(task: dict[str, Any], llm: agentbolt.LLM) -> float:
    """One rollout: 1.0 when the agent's last number equals ``task["answer"]``, else 0.0.

    ``task["temperature"]`` (optional, default 1.0) is the sampling temperature (0 in validation).
    """
    temperature = float(task.get("temperature", 1.0))
    client = ab_autogen.model_client(llm, agent="calculator", max_tokens=MAX_TOKENS, temperature=temperature)
    agent = AssistantAgent(
        name="calculator",
        model_client=client,
        tools=[ab_autogen.tool(calculate)],
        system_message=SYSTEM,
        reflect_on_tool_use=True,  # after the tool, the model states the answer itself
    )
    try:
        result = await agent.run(task=task["question"])
    finally:
        await client.close()
    last = result.messages[-1]
    text = last.content if isinstance(last.content, str) else str(last.content)
    return 1.0 if final_number(text) == float(task["answer"]) else 0.0
