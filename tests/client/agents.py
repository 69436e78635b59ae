"""Agent functions the worker tests run (imported by name, also by `agentbolt worker` subprocesses)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

from opentelemetry import trace

import agentbolt


@agentbolt.rollout
def arithmetic(task: dict[str, Any], llm: agentbolt.LLM) -> float:
    with agentbolt.agent("solver"):
        agentbolt.emit_annotation({"task_id": task["id"], "base_url": llm.base_url})
        with agentbolt.tool_call("add", {"a": task["a"], "b": task["b"]}, call_id="call-1") as call:
            call.set_result(task["a"] + task["b"])
        if task.get("bad_tool"):
            with agentbolt.tool_call("lookup") as call:
                call.fail("no such page")
        # Spans from any OpenTelemetry instrumentation inside the agent land in the attempt too.
        with trace.get_tracer("third.party.lib").start_as_current_span("http GET /search"):
            pass
    return 1.0 if task["a"] + task["b"] == task["expected"] else 0.0


@agentbolt.rollout
async def async_with_dimensions(task: Any, llm: agentbolt.LLM) -> None:
    await asyncio.sleep(0.01)
    agentbolt.emit_message("thinking")
    agentbolt.emit_reward(0.25, final=False)
    agentbolt.emit_reward({"correct": 1.0, "format": 0.5}, primary="correct")


@agentbolt.rollout
def raises(task: Any, llm: agentbolt.LLM) -> float:
    raise RuntimeError(f"tool crashed on {task}")


@agentbolt.rollout
def returns_text(task: Any, llm: agentbolt.LLM) -> Any:
    return "the answer is 4"


@agentbolt.rollout
def sleeps(task: Any, llm: agentbolt.LLM) -> float:
    time.sleep(float(task))
    return 1.0


@agentbolt.rollout
def hangs_on_first_try(task: dict[str, Any], llm: agentbolt.LLM) -> float:
    """First try: record a message, then hang (the test kills the worker). Later tries succeed."""
    marker = Path(task["marker"])
    if not marker.exists():
        marker.write_text(str(os.getpid()))
        agentbolt.emit_message("first try, about to hang")
        time.sleep(600)
    agentbolt.emit_message("retry")
    return 1.0
