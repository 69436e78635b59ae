"""A CrewAI crew of two agents: a *solver* whose model is trained and a *reviewer* whose model stays fixed.

Both agents call the same gateway; each has its own ``LLM`` naming it. The solver calls the policy model;
the reviewer calls ``reviewer``, a fixed model the gateway serves beside the policy (``fixed_models`` in
train.yaml: a copy of the starting weights that never changes), so the reviewer behaves the same at every
step. The training config also selects only ``solver`` (``rl.adapter.agents: [solver]``): the reviewer's
calls are traced but never trained on. The solver has a calculator tool wrapped in ``traced_tool`` so its
successes and failures reach AIR.
"""

from __future__ import annotations

import re
from typing import Any

import agentbolt
from agentbolt.integrations import crewai as ab_crewai  # before crewai: turns CrewAI's telemetry off
from agentbolt.integrations import traced_tool

from crewai import Agent, Crew, Process, Task  # isort: skip
from crewai.tools import tool  # isort: skip
from examples.calculator.calculator import evaluate

MAX_TOKENS = 256
REVIEWER_MODEL = "reviewer"  # a fixed model: `fixed_models: {reviewer: ...}` in train.yaml
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


@tool("calculate")
@traced_tool(name="calculate")
def calculate(expression: str) -> str:
    """Evaluate an arithmetic expression such as '12 + 7 * (3 - 1)'."""
    return str(evaluate(expression))


def final_number(text: str) -> float | None:
    numbers = _NUMBER.findall(text.replace(",", ""))
    return float(numbers[-1]) if numbers else None


def build_crew(llm: agentbolt.LLM, question: str, temperature: float = 1.0) -> Crew:
    solver = Agent(
        role="Solver",
        goal="Solve arithmetic word problems exactly",
        backstory="You turn word problems into arithmetic and compute the result.",
        llm=ab_crewai.llm(llm, agent="solver", max_tokens=MAX_TOKENS, temperature=temperature),
        tools=[calculate],
        allow_delegation=False,
        max_iter=3,
        verbose=False,
    )
    reviewer = Agent(
        role="Reviewer",
        goal="Check the solver's answer and state the final number",
        backstory="You double-check arithmetic and reply with the final number only.",
        llm=ab_crewai.llm(llm, agent="reviewer", model=REVIEWER_MODEL, max_tokens=MAX_TOKENS, temperature=0.0),
        allow_delegation=False,
        max_iter=2,
        verbose=False,
    )
    solve = Task(description=question, expected_output="The answer as a number", agent=solver)
    review = Task(
        description="Check the solver's answer to: " + question,
        expected_output="The final number only",
        agent=reviewer,
        context=[solve],
    )
    return Crew(agents=[solver, reviewer], tasks=[solve, review], process=Process.sequential, verbose=False)


@agentbolt.rollout
def crew_agent(task: dict[str, Any], llm: agentbolt.LLM) -> float:
    """One rollout: 1.0 when the crew's final number equals ``task["answer"]``, else 0.0.

    ``task["temperature"]`` (optional, default 1.0) is the solver's sampling temperature (0 in validation).
    """
    output = build_crew(llm, task["question"], float(task.get("temperature", 1.0))).kickoff()
    return 1.0 if final_number(str(output.raw)) == float(task["answer"]) else 0.0
