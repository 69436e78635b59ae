"""The LangGraph SQL example under a real worker and server: agents named, tool outcomes and rewards stored."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("langgraph", reason="needs agentbolt[langchain]")
pytest.importorskip("langchain_openai", reason="needs agentbolt[langchain]")

from agentbolt import semconv
from examples.sql_langgraph.agent import sql_agent
from tests.integrations.live import (
    RuleBackend,
    assert_llm_spans_have_tokens,
    assert_trainable,
    episodes_of,
    example_tasks,
    outcomes_of,
    run_rollouts,
)


def writes_bad_then_good_sql(prompt: str) -> str:
    """First query fails (unknown table), the checker rejects it, the rewrite is the right query."""
    if "check whether an SQL query" in prompt:
        return "CORRECT" if "ERROR" not in prompt.rsplit("Result:", 1)[-1] else "The table does not exist."
    if "Your previous query" in prompt:
        return "```sql\nSELECT COUNT(*) FROM customers WHERE city = 'London'\n```"
    return "```sql\nSELECT COUNT(*) FROM clients\n```"


def test_writer_and_checker_calls_are_named_and_sql_failures_are_recorded(tmp_path: Path, tokenizer: Any) -> None:
    backend = RuleBackend(tokenizer, writes_bad_then_good_sql)
    outcome = run_rollouts(tmp_path, backend, sql_agent, example_tasks("sql_langgraph", 2))

    assert [r["status"] for r in outcome.rollouts] == ["succeeded", "succeeded"]
    # Question 1 is the London count: the rewrite answers it; question 2 is not, so its reward is 0.
    assert [r["reward"] for r in outcome.rollouts] == [1.0, 0.0]
    assert_llm_spans_have_tokens(outcome)
    for rollout in outcome.rollouts:
        calls = outcome.llm_calls(rollout["rollout_id"])
        # write, check (rejects), rewrite, check (accepts): writer, checker, writer, checker
        assert sorted(c["attributes"][semconv.LLM_AGENT_NAME] for c in calls) == ["checker"] * 2 + ["writer"] * 2
        tools = outcome.tool_calls(rollout["rollout_id"])
        assert [t["attributes"][semconv.TOOL_SUCCESS] for t in sorted(tools, key=lambda t: t["start_time_ns"])] == [
            False,
            True,
        ]
        first_try = min(tools, key=lambda t: t["start_time_ns"])
        assert "no such table" in first_try["status"]["message"]
        agents = {s["attributes"].get(semconv.GEN_AI_AGENT_NAME) for s in outcome.spans[rollout["rollout_id"]]}
        assert {"writer", "checker"} <= agents

    # What training sees (rl.adapter.agents: [writer]): the writer's two calls, each with the query it ran; the
    # checker's calls stay in the traces (above) but give no transitions.
    for rollout, episode in zip(outcome.rollouts, episodes_of(outcome, agents=["writer"]), strict=True):
        assert episode.rollout_id == rollout["rollout_id"]
        assert_trainable(episode, rollout)
        assert outcomes_of(episode) == [
            ("writer", [("execute_sql", False)]),
            ("writer", [("execute_sql", True)]),
        ]
        assert "no such table" in (episode.transitions[0].tool_outcomes[0].error or "")
    # Without the filter the checker's calls are transitions too, in call order.
    for episode in episodes_of(outcome):
        assert [t.agent_name for t in episode.transitions] == ["writer", "checker", "writer", "checker"]


def test_garbage_from_a_random_model_ends_in_a_zero_reward_not_a_crash(
    tmp_path: Path, tiny_engine_backend: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Short replies keep the test fast (the tiny model babbles to max_tokens).
    monkeypatch.setattr("examples.sql_langgraph.agent.MAX_TOKENS", 24)
    monkeypatch.setattr("examples.sql_langgraph.agent.CHECK_MAX_TOKENS", 8)
    outcome = run_rollouts(tmp_path, tiny_engine_backend, sql_agent, example_tasks("sql_langgraph", 2))

    assert [r["status"] for r in outcome.rollouts] == ["succeeded", "succeeded"]
    assert [r["reward"] for r in outcome.rollouts] == [0.0, 0.0]
    assert_llm_spans_have_tokens(outcome)
    assert outcome.agent_names() == {"writer", "checker"}
    assert all(t["attributes"][semconv.TOOL_SUCCESS] is False for t in outcome.tool_calls())
