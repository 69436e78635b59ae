"""A CrewAI crew of two agents on one policy model: a *solver* that is trained and a *reviewer* that stays fixed.

Both agents call the same gateway; each has its own ``LLM`` naming it. The training config selects only
``solver`` (``rl.adapter.agents: [solver]``), so the reviewer's calls are traced but never trained on.
The solver has a calculator tool wrapped in ``traced_tool`` so its successes and failures reach AIR.
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
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


@tool("calculate")
@traced_tool(name="calculate")
def calculate(expression: str) -> str:
    """Evaluate an arithmetic expression such as '12 + 7 * (3 - 1)'."""
    return str(evaluate(expression))


def final_number(text: str) -> float | None:
    numbers = _NUMBER.findall(text.replace(",", ""))
    return float(numbers[-1]) if numbers else None


def build_crew(llm: agentbolt.LLM, question: str) -> Crew:
    solver = Agent(
        role="Solver",
        goal="Solve arithmetic word problems exactly",
        backstory="You turn word problems into arithmetic and compute the result.",
        llm=ab_crewai.llm(llm, agent="solver", max_tokens=MAX_TOKENS),
        tools=[calculate],
        allow_delegation=False,
        max_iter=3,
        verbose=False,
    )
    reviewer = Agent(
        role="Reviewer",
        goal="Check the solver's answer and state the final number",
        backstory="You double-check arithmetic and reply with the final number only.",
        llm=ab_crewai.llm(llm, agent="reviewer", max_tokens=MAX_TOKENS),
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
    """One rollout: 1.0 when the crew's final number equals ``task["answer"]``, else 0.0."""
    output = build_crew(llm, task["question"]).kickoff()
    return 1.0 if final_number(str(output.raw)) == float(task["answer"]) else 0.0
