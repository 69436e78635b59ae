"""The demo agent: a plain ``openai`` client with a calculator tool, solving arithmetic problems.

The loop is what any tool-using agent does: ask the model; when it calls the calculator, run the tool
(traced with :func:`agentbolt.tool_call`, so a failing call is an AIR signal) and send the result back;
when it answers in text, score that answer. At most ``MAX_TURNS`` model calls per task. The conversation
starts with one worked example (``WORKED_EXAMPLE``): the agent's own prompt, as its system message is.

Reward: 1.0 when the final answer equals the task's answer, else 0.0. The final answer is the number after
``Answer:`` if the reply has one, else the last integer in the reply (small models often forget the
format, and this task should reward arithmetic, not formatting). Model garbage never raises: it scores 0.
"""

from __future__ import annotations

import json
import re
from typing import Any

import openai

import agentbolt
from examples.calculator.calculator import CalculatorError, evaluate

MAX_TURNS = 3
MAX_TOKENS = 64  # answers are a sentence; a longer reply is a ramble worth cutting short
SYSTEM_PROMPT = "Solve the math problem. End your final reply with: Answer: <number>"

# One worked example, as earlier turns of the conversation: the agent's own prompt, like its system message.
# A 135M model does not call a tool from instructions alone (0 of 64 replies at T=1, any format measured);
# after one example it does (43 of 64 in the pythonic format the gateway uses for SmolLM2).
WORKED_EXAMPLE: list[dict[str, Any]] = [
    {"role": "user", "content": "What is 12 * 34?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_example",
                "type": "function",
                "function": {"name": "calculator", "arguments": json.dumps({"expression": "12 * 34"})},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_example", "content": "408"},
    {"role": "assistant", "content": "Answer: 408"},
]

CALCULATOR_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "calculator",
        "description": "Evaluate an arithmetic expression such as 12 + 7",
        "parameters": {
            "type": "object",
            "properties": {"expression": {"type": "string", "description": "numbers and + - * / ( )"}},
            "required": ["expression"],
        },
    },
}

_ANSWER = re.compile(r"answer\s*(?:is)?\s*[:=]?\s*\**\s*(-?\d[\d,]*)", re.IGNORECASE)
_INTEGER = re.compile(r"-?\d[\d,]*")


def final_answer(text: str | None) -> int | None:
    """The integer a reply gives as its answer: after the last ``Answer:``, else the last integer; None if none.

    Thousands separators are accepted (``1,200``); a decimal such as ``3.5`` counts as its digits' integers,
    so it never equals an integer answer by accident of rounding.
    """
    if not text:
        return None
    found = _ANSWER.findall(text) or _INTEGER.findall(text)
    if not found:
        return None
    digits = found[-1].replace(",", "")
    try:
        return int(digits)
    except ValueError:  # e.g. "-," cannot happen with the patterns above, but model text is untrusted
        return None


def reward_of(text: str | None, answer: int) -> float:
    """1.0 when the reply's final answer is ``answer``, else 0.0."""
    return 1.0 if final_answer(text) == answer else 0.0


def run_calculator(arguments: str) -> str:
    """Run the calculator on a tool call's JSON arguments; raises CalculatorError on any bad input."""
    try:
        parsed = json.loads(arguments)
    except json.JSONDecodeError as exc:
        raise CalculatorError(f"arguments are not JSON: {exc.msg}") from None
    expression = parsed.get("expression") if isinstance(parsed, dict) else None
    if not isinstance(expression, (str, int, float)) or isinstance(expression, bool):
        raise CalculatorError('arguments must be {"expression": "<arithmetic>"}')
    return str(evaluate(str(expression)))


@agentbolt.rollout
def solve(task: dict[str, Any], llm: agentbolt.LLM) -> float:
    """Solve one word problem (``task["question"]``) with the policy model; reward 1 if right, else 0.

    ``task["temperature"]`` (optional, default 1.0) sets the sampling temperature, e.g. 0 for greedy
    validation.
    """
    client = openai.OpenAI(base_url=llm.base_url, api_key=llm.api_key, max_retries=1)
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": SYSTEM_PROMPT},
        *WORKED_EXAMPLE,
        {"role": "user", "content": str(task["question"])},
    ]
    with agentbolt.agent("calculator-agent"):
        for _ in range(MAX_TURNS):
            response = client.chat.completions.create(
                model=llm.model,
                messages=messages,  # type: ignore[arg-type]
                tools=[CALCULATOR_TOOL],  # type: ignore[list-item]
                max_tokens=MAX_TOKENS,
                temperature=float(task.get("temperature", 1.0)),
            )
            message = response.choices[0].message
            if not message.tool_calls:
                return reward_of(message.content, int(task["answer"]))
            messages.append(message.model_dump(include={"role", "content", "tool_calls"}, exclude_none=True))
            for call in message.tool_calls:
                messages.append({"role": "tool", "tool_call_id": call.id, "content": _call_tool(call)})
    return 0.0  # still calling tools after MAX_TURNS: no answer


def _call_tool(call: Any) -> str:
    """The tool message text for one tool call: the result, or an error the model can read."""
    name, arguments = call.function.name, call.function.arguments
    with agentbolt.tool_call(name, arguments, call_id=call.id) as traced:
        if name != "calculator":
            traced.fail(f"unknown tool {name!r}")
            return f"error: unknown tool {name!r}; the only tool is calculator"
        try:
            result = run_calculator(arguments)
        except CalculatorError as exc:
            traced.fail(str(exc))
            return f"error: {exc}"
        traced.set_result(result)
        return result
