"""The AutoGen AgentChat calculator example under a real worker and server."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("autogen_agentchat", reason="needs agentbolt[autogen]")
pytest.importorskip("autogen_ext.models.openai", reason="needs agentbolt[autogen]")

from agentbolt import semconv
from examples.calculator.tasks import make_tasks
from examples.calculator_autogen.agent import calculator_agent
from tests.integrations.live import (
    RuleBackend,
    assert_llm_spans_have_tokens,
    assert_trainable,
    episodes_of,
    outcomes_of,
    run_rollouts,
)

_RESPONSE = re.compile(r"<tool_response[^>]*>\s*(.*?)\s*</tool_response>", re.DOTALL)


def calculate_then_answer(prompt: str) -> str:
    """Marbles: a valid expression; cookies: words the calculator refuses. Then state the tool's result."""
    conversation = prompt.rsplit("<|im_start|>user", 1)[-1]  # the task's turn, after the worked example
    responses = _RESPONSE.findall(conversation)
    if responses:
        return f"The answer is {responses[-1]}." if responses[-1].lstrip("-").isdigit() else "I cannot tell."
    expression = "4 + 22" if "marbles" in conversation else "twenty-four and two"
    return f'<tool_call>{{"name": "calculate", "arguments": {{"expression": "{expression}"}}}}</tool_call>'


def test_tool_outcomes_land_on_autogens_own_spans_with_agent_names_and_rewards(tmp_path: Path, tokenizer: Any) -> None:
    tasks = [
        {"question": "Ben has 4 marbles and finds 22 more. How many marbles does he have?", "answer": 26},
        {"question": "There are 24 cookies in a box and 2 on the table. How many cookies in all?", "answer": 26},
    ]
    outcome = run_rollouts(tmp_path, RuleBackend(tokenizer, calculate_then_answer), calculator_agent, tasks)

    assert [r["status"] for r in outcome.rollouts] == ["succeeded", "succeeded"]
    assert [r["reward"] for r in outcome.rollouts] == [1.0, 0.0]
    assert_llm_spans_have_tokens(outcome)
    assert outcome.agent_names() == {"calculator"}
    for rollout, succeeded in zip(outcome.rollouts, [True, False], strict=True):
        [tool] = outcome.tool_calls(rollout["rollout_id"])
        assert tool["attributes"][semconv.GEN_AI_TOOL_NAME] == "calculate"
        assert tool["attributes"][semconv.TOOL_SUCCESS] is succeeded
        agents = [
            s
            for s in outcome.spans[rollout["rollout_id"]]
            if s["attributes"].get(semconv.GEN_AI_OPERATION) == "invoke_agent"
        ]
        assert {a["attributes"][semconv.GEN_AI_AGENT_NAME] for a in agents} == {"calculator"}
    assert outcome.tool_calls(outcome.rollouts[0]["rollout_id"])[0]["attributes"][semconv.TOOL_RESULT] == "26"

    episodes = episodes_of(outcome, agents=["calculator"])
    for rollout, episode, succeeded in zip(outcome.rollouts, episodes, [True, False], strict=True):
        assert episode.rollout_id == rollout["rollout_id"]
        assert_trainable(episode, rollout)
        assert outcomes_of(episode) == [("calculator", [("calculate", succeeded)]), ("calculator", [])]
        # AutoGen's tool span carries the model's tool call id: matched to the call that asked for it.
        [tool] = episode.transitions[0].tool_outcomes
        assert tool.matched_by == "call_id" and tool.call_id
        assert episode.transitions[0].tool_calls_requested == 1
    assert "unsupported element" in (episodes[1].transitions[0].tool_outcomes[0].error or "")


def test_garbage_from_a_random_model_scores_zero_without_failing(
    tmp_path: Path, tiny_engine_backend: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("examples.calculator_autogen.agent.MAX_TOKENS", 24)
    outcome = run_rollouts(tmp_path, tiny_engine_backend, calculator_agent, make_tasks("train", 2, 0))

    assert [r["status"] for r in outcome.rollouts] == ["succeeded", "succeeded"]
    assert all(r["reward"] in (0.0, 1.0) for r in outcome.rollouts)
    assert_llm_spans_have_tokens(outcome)
    assert outcome.agent_names() == {"calculator"}
