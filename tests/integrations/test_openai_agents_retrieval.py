"""The OpenAI Agents SDK retrieval example under a real worker and server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("agents", reason="needs agentbolt[openai-agents]")

from agentbolt import semconv
from examples.retrieval_openai_agents.agent import retrieval_agent
from tests.integrations.live import (
    RuleBackend,
    assert_llm_spans_have_tokens,
    assert_trainable,
    episodes_of,
    example_tasks,
    outcomes_of,
    run_rollouts,
)


def search_then_answer(prompt: str) -> str:
    """Search with an empty query first (the tool fails), then a real one, then answer from what came back."""
    conversation = prompt.split("deepest in the world?", 1)[-1]  # after the system message's format description
    if "Lake Baikal" in conversation:
        return "Answer: Lake Baikal"
    if "<tool_response" in conversation:
        return '<tool_call>{"name": "search_documents", "arguments": {"query": "deepest lake"}}</tool_call>'
    return '<tool_call>{"name": "search_documents", "arguments": {"query": "?"}}</tool_call>'


def test_agent_and_tool_spans_mirror_the_sdk_trace_with_tool_failure_and_reward(tmp_path: Path, tokenizer: Any) -> None:
    backend = RuleBackend(tokenizer, search_then_answer)
    outcome = run_rollouts(tmp_path, backend, retrieval_agent, example_tasks("retrieval_openai_agents", 1))

    [rollout] = outcome.rollouts
    assert rollout["status"] == "succeeded"
    assert rollout["reward"] == pytest.approx(1.0)
    assert_llm_spans_have_tokens(outcome)
    assert outcome.agent_names() == {"researcher"}
    assert len(outcome.llm_calls()) == 3
    tools = sorted(outcome.tool_calls(), key=lambda t: t["start_time_ns"])
    assert [t["attributes"][semconv.GEN_AI_TOOL_NAME] for t in tools] == ["search_documents"] * 2
    assert [t["attributes"][semconv.TOOL_SUCCESS] for t in tools] == [False, True]
    assert "Lake Baikal" in tools[1]["attributes"][semconv.TOOL_RESULT]
    [agent_span] = [s for s in outcome.all_spans() if s["attributes"].get(semconv.GEN_AI_OPERATION) == "invoke_agent"]
    assert agent_span["attributes"][semconv.GEN_AI_AGENT_NAME] == "researcher"
    assert all(t["parent_id"] == agent_span["span_id"] for t in tools)

    [episode] = episodes_of(outcome, agents=["researcher"])
    assert_trainable(episode, rollout)
    assert outcomes_of(episode) == [
        ("researcher", [("search_documents", False)]),
        ("researcher", [("search_documents", True)]),
        ("researcher", []),
    ]
    assert [t.tool_calls_requested for t in episode.transitions] == [1, 1, 0]
    assert episode.final_reward is not None and episode.final_reward.dimensions["f1"] == pytest.approx(1.0)


def test_garbage_from_a_random_model_scores_zero_without_failing(
    tmp_path: Path, tiny_engine_backend: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("examples.retrieval_openai_agents.agent.MAX_TOKENS", 24)
    outcome = run_rollouts(tmp_path, tiny_engine_backend, retrieval_agent, example_tasks("retrieval_openai_agents", 2))

    assert [r["status"] for r in outcome.rollouts] == ["succeeded", "succeeded"]
    assert [r["reward"] for r in outcome.rollouts] == [0.0, 0.0]
    assert_llm_spans_have_tokens(outcome)
    assert outcome.agent_names() == {"researcher"}
