"""A calculator agent with AutoGen AgentChat: one AssistantAgent with a calculator tool, exact-match reward.

Tasks are the demo's tool-needing problems (``examples.calculator.tasks.make_tool_tasks``: products and sums a
135M model cannot do in its head); the tool is the safe evaluator of ``examples.calculator.calculator``. The
agent's model context starts with one worked example, written in AutoGen's own message types (a question, a
``calculate`` call, its result, the answer): the agent's own prompt, as its system message is.
"""

from __future__ import annotations

import re
from typing import Any

from autogen_agentchat.agents import AssistantAgent
from autogen_core import FunctionCall
from autogen_core.model_context import UnboundedChatCompletionContext
from autogen_core.models import (
    AssistantMessage,
    FunctionExecutionResult,
    FunctionExecutionResultMessage,
    LLMMessage,
    UserMessage,
)

import agentbolt
from agentbolt.integrations import autogen as ab_autogen
from examples.calculator.calculator import evaluate

MAX_TOKENS = 64  # a call or a one-line answer; a longer reply is a ramble worth cutting short
SYSTEM = "Solve the math problem with the calculate tool. End your final reply with: Answer: <number>"
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def calculate(expression: str) -> str:
    """Evaluate an arithmetic expression such as '12 + 7 * (3 - 1)'."""
    return str(evaluate(expression))


def worked_example() -> list[LLMMessage]:
    """One solved problem as earlier turns of the agent's context: question, tool call, result, answer.

    A 135M model does not call a tool from its instructions alone; after one example it often does.
    """
    call = FunctionCall(id="call_example", name="calculate", arguments='{"expression": "12 * 34"}')
    return [
        UserMessage(content="What is 12 * 34?", source="user"),
        AssistantMessage(content=[call], source="calculator"),
        FunctionExecutionResultMessage(
            content=[FunctionExecutionResult(content="408", name="calculate", call_id="call_example", is_error=False)]
        ),
        AssistantMessage(content="Answer: 408", source="calculator"),
    ]


def final_number(text: str) -> float | None:
    """The last number in ``text``, or None."""
    numbers = _NUMBER.findall(text.replace(",", ""))
    return float(numbers[-1]) if numbers else None


@agentbolt.rollout
async def calculator_agent(task: dict[str, Any], llm: agentbolt.LLM) -> float:
    """One rollout: 1.0 when the agent's last number equals ``task["answer"]``, else 0.0.

    ``task["temperature"]`` (optional, default 1.0) is the sampling temperature.
    """
    temperature = float(task.get("temperature", 1.0))
    client = ab_autogen.model_client(llm, agent="calculator", max_tokens=MAX_TOKENS, temperature=temperature)
    agent = AssistantAgent(
        name="calculator",
        model_client=client,
        tools=[ab_autogen.tool(calculate)],
        system_message=SYSTEM,
        model_context=UnboundedChatCompletionContext(initial_messages=worked_example()),
        reflect_on_tool_use=True,  # after the tool, the model states the answer itself
    )
    try:
        result = await agent.run(task=task["question"])
    finally:
        await client.close()
    last = result.messages[-1]
    text = last.content if isinstance(last.content, str) else str(last.content)
    return 1.0 if final_number(text) == float(task["answer"]) else 0.0
