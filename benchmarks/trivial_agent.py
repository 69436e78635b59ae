"""The trivial agent of ``benchmarks/worker_throughput.py``: five annotation spans and a reward, no LLM call.

It measures what the worker itself costs per rollout (dequeue, tracing, span export, finish), so the agent
does as little as an agent can while still emitting spans through agentbolt's helpers.
"""

from __future__ import annotations

from typing import Any

import agentbolt
from agentbolt.types import LLM


@agentbolt.rollout
async def solve(task: Any, llm: LLM) -> float:
    agentbolt.emit_annotation({"task": task["i"], "plan": "add"})
    agentbolt.emit_message("thinking")
    with agentbolt.tool_call("lookup", {"key": task["i"]}) as call:
        call.set_result(task["i"] * 2)
    with agentbolt.tool_call("calculator", {"expression": "2 + 2"}) as call:
        call.set_result(4)
    agentbolt.emit_annotation({"done": True})
    return 1.0  # the worker records it as the reward span
