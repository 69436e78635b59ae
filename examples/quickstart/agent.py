"""A tiny rule-based arithmetic agent: enough to see rollouts, tool calls and rewards in the traces.

It does not call an LLM yet (the gateway arrives with the LLM-gateway issue); it shows what the
client records: an agent scope, a calculator tool call that succeeds or fails, an annotation, and
the reward it returns.
"""

from __future__ import annotations

import operator
import re
from typing import Any

import agentbolt

OPS = {"plus": operator.add, "minus": operator.sub, "times": operator.mul, "divided by": operator.truediv}


def calculator(a: float, op: str, b: float) -> float:
    return OPS[op](a, b)


@agentbolt.rollout
def solve(task: dict[str, Any], llm: agentbolt.LLM) -> float:
    """Answer questions like 'What is 12 times 7?'; reward 1 for the right answer, else 0."""
    with agentbolt.agent("calculator-agent"):
        match = re.search(r"(-?\d+) (plus|minus|times|divided by) (-?\d+)", task["question"])
        if match is None:
            agentbolt.emit_message(f"could not parse {task['question']!r}")
            return 0.0
        a, op, b = int(match[1]), match[2], int(match[3])
        agentbolt.emit_annotation({"operation": op})
        try:
            with agentbolt.tool_call("calculator", {"a": a, "op": op, "b": b}) as call:
                answer = calculator(a, op, b)
                call.set_result(answer)
        except ZeroDivisionError as exc:
            agentbolt.emit_exception(exc)
            return 0.0
        return 1.0 if abs(answer - task["answer"]) < 1e-6 else 0.0
