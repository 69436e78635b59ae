"""The CrewAI two-agent crew example under a real worker and server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import agentbolt.integrations.crewai  # noqa: F401  (before crewai: turns CrewAI's telemetry off)

pytest.importorskip("crewai", reason="needs agentbolt[crewai]")

from agentbolt import semconv
from agentbolt.gateway.backend import EngineBackend
from examples.crew_crewai.agent import crew_agent
from tests.integrations.live import (
    RuleBackend,
    assert_llm_spans_have_tokens,
    assert_trainable,
    episodes_of,
    outcomes_of,
    run_rollouts,
)

TASKS = [
    {"question": "Ben has 4 marbles and finds 22 more. How many marbles does he have?", "answer": 26},
    {"question": "There are 24 cookies in a box and 2 on the table. How many cookies in all?", "answer": 26},
]


def solve_and_review(prompt: str) -> str:
    """Solver (CrewAI's ReAct text format): calculator on "4 + 22" for marbles (26), on words for cookies (the
    tool fails, the solver then says 25: wrong). Reviewer: repeats the solver's number."""
    marbles = "marbles" in prompt
    if "Reviewer" in prompt:
        return "Thought: I checked it.\nFinal Answer: " + ("26" if marbles else "25")
    if "Observation" in prompt.split("<|im_start|>user", 1)[-1]:
        return "Thought: I have the result.\nFinal Answer: " + ("26" if marbles else "25")
    expression = "4 + 22" if marbles else "twenty-four and two"
    return f'Thought: I use the calculator.\nAction: calculate\nAction Input: {{"expression": "{expression}"}}'


def test_trained_and_fixed_agents_are_named_on_their_calls_and_rewards_stored(tmp_path: Path, tokenizer: Any) -> None:
    policy = RuleBackend(tokenizer, solve_and_review)
    reviewer = RuleBackend(tokenizer, solve_and_review, model_name="reviewer")  # the fixed model
    outcome = run_rollouts(tmp_path, policy, crew_agent, TASKS, fixed=(reviewer,))

    assert [r["status"] for r in outcome.rollouts] == ["succeeded", "succeeded"]
    assert [r["reward"] for r in outcome.rollouts] == [1.0, 0.0]
    assert_llm_spans_have_tokens(outcome)
    for rollout, succeeded in zip(outcome.rollouts, [True, False], strict=True):
        calls = outcome.llm_calls(rollout["rollout_id"])
        attrs = [c["attributes"] for c in calls]
        served = {(a[semconv.LLM_AGENT_NAME], a[semconv.GEN_AI_RESPONSE_MODEL]) for a in attrs}
        assert served == {("solver", "policy"), ("reviewer", "reviewer")}  # each agent on its own model
        assert [a.get(semconv.LLM_FIXED) for a in attrs].count(True) == 1
        tools = outcome.tool_calls(rollout["rollout_id"])  # CrewAI retries a failing tool itself
        assert tools and {t["attributes"][semconv.GEN_AI_TOOL_NAME] for t in tools} == {"calculate"}
        assert {t["attributes"][semconv.TOOL_SUCCESS] for t in tools} == {succeeded}

    # What training sees (rl.adapter.agents: [solver]): the solver's two calls; the reviewer's call is traced
    # (above) but gives no transition (its model is fixed). Every tool run (CrewAI's retries included) follows
    # the solver's first call.
    episodes = episodes_of(outcome, agents=["solver"])
    for rollout, episode, succeeded in zip(outcome.rollouts, episodes, [True, False], strict=True):
        assert episode.rollout_id == rollout["rollout_id"]
        assert_trainable(episode, rollout)
        assert len(outcome.llm_calls(rollout["rollout_id"])) == 3
        [(first, tools), (second, after)] = outcomes_of(episode)
        assert (first, second, after) == ("solver", "solver", [])
        assert tools and set(tools) == {("calculate", succeeded)}
        assert len(tools) == len(outcome.tool_calls(rollout["rollout_id"]))


def test_garbage_from_a_random_model_scores_zero_without_failing(
    tmp_path: Path, tiny_engine_backend: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("examples.crew_crewai.agent.MAX_TOKENS", 24)
    reviewer = EngineBackend(tiny_engine_backend.engine, "reviewer")  # the same tiny engine under a second name
    outcome = run_rollouts(tmp_path, tiny_engine_backend, crew_agent, TASKS[:1], fixed=(reviewer,))

    assert [r["status"] for r in outcome.rollouts] == ["succeeded"]
    assert outcome.rollouts[0]["reward"] in (0.0, 1.0)
    assert_llm_spans_have_tokens(outcome)
    assert outcome.agent_names() <= {"solver", "reviewer"}
