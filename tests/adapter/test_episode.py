"""The adapter: which attempt, which calls, agent names, order, signals and drop reasons."""

from __future__ import annotations

import math

import pytest

from agentbolt import semconv
from agentbolt.adapter import build_episode
from agentbolt.types import AdapterConfig, AttemptStatus, RolloutStatus
from tests.adapter.factories import AttemptSpans, attempt, rollout


def test_transitions_are_ordered_by_sequence_id_not_by_clock() -> None:
    a = AttemptSpans()
    a.llm(response=[11], start=9_000_000)  # arrives first, but its clock says later
    a.llm(response=[22], start=1_000)
    ep = build_episode(rollout(), a.spans, AdapterConfig()).episode
    assert ep is not None
    assert [t.response_token_ids for t in ep.transitions] == [[11], [22]]
    assert [t.index for t in ep.transitions] == [0, 1]


def test_a_transition_carries_the_calls_ids_logprobs_version_and_finish_reason() -> None:
    a = AttemptSpans()
    a.llm(prompt=[5, 6, 7], response=[8, 9], logprobs=[-0.1, -0.2], version=3, finish="length")
    t = build_episode(rollout(), a.spans, AdapterConfig()).episode.transitions[0]  # type: ignore[union-attr]
    assert (t.prompt_token_ids, t.response_token_ids, t.logprobs) == ([5, 6, 7], [8, 9], [-0.1, -0.2])
    assert (t.model_version, t.finish_reason, t.truncated, t.model) == (3, "length", True, "policy")


def test_only_the_last_attempt_is_used_and_earlier_attempts_are_counted() -> None:
    first = AttemptSpans(attempt_id="a1")
    first.llm(response=[1])
    first.llm(response=[2])
    second = AttemptSpans(attempt_id="a2")
    second.llm(response=[3])
    r = rollout(
        attempts=[attempt("a2", 2, AttemptStatus.SUCCEEDED), attempt("a1", 1, AttemptStatus.TIMEOUT)],
    )
    result = build_episode(r, first.spans + second.spans, AdapterConfig())
    assert result.episode is not None and result.episode.attempt_id == "a2"
    assert [t.response_token_ids for t in result.episode.transitions] == [[3]]
    assert (result.earlier_attempts, result.earlier_attempt_spans) == (1, 2)


def test_without_the_attempt_list_the_highest_numbered_root_span_names_the_last_attempt() -> None:
    first, second = AttemptSpans(attempt_id="a1"), AttemptSpans(attempt_id="a2")
    first.llm(response=[1], start=50_000_000)  # the older attempt has the later clock: numbers win
    first.root(number=1)
    second.llm(response=[2], start=1_000)
    second.root(number=2)
    result = build_episode(rollout(attempts=None), second.spans + first.spans, AdapterConfig())
    assert result.episode is not None and result.episode.attempt_id == "a2"
    assert result.episode.attempt_status is AttemptStatus.SUCCEEDED


@pytest.mark.parametrize(
    ("status", "reason"), [(RolloutStatus.RUNNING, "not_finished"), (RolloutStatus.CANCELLED, "cancelled")]
)
def test_unfinished_and_cancelled_rollouts_give_no_episode(status: RolloutStatus, reason: str) -> None:
    a = AttemptSpans()
    a.llm()
    result = build_episode(rollout(status=status), a.spans, AdapterConfig())
    assert (result.episode, result.dropped) == (None, reason)


def test_a_rollout_with_no_attempts_and_no_spans_is_dropped_as_no_spans() -> None:
    result = build_episode(rollout(attempts=None), [], AdapterConfig())
    assert (result.episode, result.dropped) == (None, "no_spans")


def test_llm_spans_of_client_instrumentation_are_not_transitions() -> None:
    a = AttemptSpans()
    a.add("chat gpt", {semconv.GEN_AI_OPERATION: "chat", semconv.GEN_AI_REQUEST_MODEL: "policy"})
    a.llm()
    result = build_episode(rollout(), a.spans, AdapterConfig())
    assert len(result.episode.transitions) == 1  # type: ignore[union-attr]
    assert not result.transitions_dropped


# -- agent names ---------------------------------------------------------------------------------


def test_agent_name_comes_from_the_gateway_header_first() -> None:
    a = AttemptSpans()
    scope = a.agent("planner", start=0, end=10**9)
    a.llm(agent="coder", parent=scope)
    t = build_episode(rollout(), a.spans, AdapterConfig()).episode.transitions[0]  # type: ignore[union-attr]
    assert (t.agent_name, t.agent_source) == ("coder", "header")


def test_agent_name_comes_from_the_nearest_agent_ancestor_through_parent_ids() -> None:
    a = AttemptSpans()
    outer = a.agent("planner", start=0, end=10**9)
    inner = a.agent("coder", start=0, end=10**9, parent=outer)
    step = a.add("some framework step", {}, parent=inner)
    a.llm(parent=step, start=5)  # starts inside both windows: only the parent chain can tell "coder"
    other = a.agent("reviewer", start=10, end=10**9)  # innermost by time, but not an ancestor
    assert other
    t = build_episode(rollout(), a.spans, AdapterConfig()).episode.transitions[0]  # type: ignore[union-attr]
    assert (t.agent_name, t.agent_source) == ("coder", "parent")


def test_agent_name_falls_back_to_the_innermost_agent_span_whose_window_holds_the_call() -> None:
    a = AttemptSpans()
    a.agent("planner", start=0, end=10_000)
    a.agent("coder", start=2_000, end=5_000)
    a.agent("reviewer", start=6_000, end=9_000)
    a.llm(start=3_000)
    a.llm(start=7_000)
    a.llm(start=5_500)
    a.llm(start=20_000)
    ep = build_episode(rollout(), a.spans, AdapterConfig()).episode
    assert ep is not None
    assert [(t.agent_name, t.agent_source) for t in ep.transitions] == [
        ("coder", "time"),
        ("reviewer", "time"),
        ("planner", "time"),
        (None, None),
    ]


def test_agent_selection_keeps_matching_names_and_patterns_and_drops_the_rest() -> None:
    a = AttemptSpans()
    for name in ("planner", "coder-1", "coder-2", "reviewer", None):
        a.llm(agent=name)
    result = build_episode(rollout(), a.spans, AdapterConfig(agents=["planner", "coder-*"]))
    assert [t.agent_name for t in result.episode.transitions] == ["planner", "coder-1", "coder-2"]  # type: ignore[union-attr]
    assert result.transitions_dropped == {"agent_filtered": 2}  # reviewer and the unnamed call
    everyone = build_episode(rollout(), a.spans, AdapterConfig())
    assert len(everyone.episode.transitions) == 5  # type: ignore[union-attr]


def test_model_filter_keeps_only_the_policy_models() -> None:
    a = AttemptSpans()
    a.llm(model="policy")
    a.llm(model="gpt-4o-judge")
    result = build_episode(rollout(), a.spans, AdapterConfig(models=["pol*"]))
    assert [t.model for t in result.episode.transitions] == ["policy"]  # type: ignore[union-attr]
    assert result.transitions_dropped == {"model_filtered": 1}


def test_calls_of_a_fixed_model_are_never_transitions_whatever_the_selection() -> None:
    a = AttemptSpans()
    a.llm(agent="solver")
    a.llm(agent="reviewer", model="reviewer", extra={semconv.LLM_FIXED: True})
    for config in (AdapterConfig(), AdapterConfig(agents=["solver", "reviewer"])):
        result = build_episode(rollout(), a.spans, config)
        assert [t.agent_name for t in result.episode.transitions] == ["solver"]  # type: ignore[union-attr]
        assert result.transitions_dropped == {"fixed_model": 1}


# -- drops ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("llm_kwargs", "config", "reason"),
    [
        ({"drop": (semconv.LLM_RESPONSE_TOKEN_IDS,)}, {}, "missing_token_ids"),
        ({"drop": (semconv.LLM_PROMPT_TOKEN_IDS,)}, {}, "missing_token_ids"),
        ({"drop": (semconv.LLM_RESPONSE_LOGPROBS,)}, {}, "missing_logprobs"),
        ({"response": [1, 2, 3], "logprobs": [-0.1, -0.2]}, {}, "logprob_mismatch"),
        ({"response": [1, 2], "logprobs": [-0.1, math.nan]}, {}, "bad_logprobs"),
        ({"response": [], "logprobs": []}, {}, "empty_response"),
        ({"extra": {semconv.LLM_TOKEN_SOURCE: "retokenized"}}, {"drop_retokenized": True}, "retokenized"),
        ({"prompt": [1] * 9}, {"max_prompt_tokens": 8}, "prompt_too_long"),
        ({"response": [1] * 5}, {"max_response_tokens": 4}, "response_too_long"),
    ],
)
def test_unusable_calls_are_dropped_and_counted_by_reason(llm_kwargs: dict, config: dict, reason: str) -> None:
    a = AttemptSpans()
    a.llm(response=[42])
    a.llm(**llm_kwargs)
    result = build_episode(rollout(), a.spans, AdapterConfig(**config))
    assert [t.response_token_ids for t in result.episode.transitions] == [[42]]  # type: ignore[union-attr]
    assert result.transitions_dropped == {reason: 1}


def test_limits_keep_calls_at_exactly_the_limit_and_retokenized_calls_by_default() -> None:
    a = AttemptSpans()
    a.llm(prompt=[1] * 8, response=[2] * 4, extra={semconv.LLM_TOKEN_SOURCE: "retokenized"})
    result = build_episode(rollout(), a.spans, AdapterConfig(max_prompt_tokens=8, max_response_tokens=4))
    assert result.episode.transitions[0].token_source == "retokenized"  # type: ignore[union-attr]
    assert not result.transitions_dropped


# -- signals -------------------------------------------------------------------------------------


def test_tool_calls_follow_the_call_before_them_or_the_call_that_named_their_id() -> None:
    a = AttemptSpans()
    a.llm(tool_call_ids=["c1"])
    a.llm(tool_call_ids=["c2"])
    a.tool(call_id="c1", success=False, error="division by zero")  # arrived late: matched by id
    a.tool(success=True)  # no id: the call before it
    ep = build_episode(rollout(), a.spans, AdapterConfig()).episode
    assert ep is not None
    first, second = ep.transitions
    assert [(o.success, o.matched_by, o.error) for o in first.tool_outcomes] == [(False, "call_id", "division by zero")]
    assert [(o.success, o.matched_by) for o in second.tool_outcomes] == [(True, "order")]
    assert (first.tool_calls_requested, second.tool_calls_requested) == (1, 1)


def test_a_tool_span_without_the_success_flag_fails_when_its_status_is_error() -> None:
    a = AttemptSpans()
    a.llm()
    a.tool(success=None, error="raised")
    a.tool(success=None)
    outcomes = build_episode(rollout(), a.spans, AdapterConfig()).episode.transitions[0].tool_outcomes  # type: ignore[union-attr]
    assert [o.success for o in outcomes] == [False, True]


def test_client_spans_are_placed_by_clock_by_default_and_by_arrival_on_request() -> None:
    a = AttemptSpans()
    a.llm(start=1_000)  # ends at 1_500
    a.llm(start=5_000)  # ends at 5_500
    a.tool(success=False, start=2_000)  # arrived after the second call, ran after the first
    by_sequence = build_episode(rollout(), a.spans, AdapterConfig(signal_order="sequence")).episode
    by_default = build_episode(rollout(), a.spans, AdapterConfig()).episode
    assert [len(t.tool_outcomes) for t in by_sequence.transitions] == [0, 1]  # type: ignore[union-attr]
    assert [len(t.tool_outcomes) for t in by_default.transitions] == [1, 0]  # type: ignore[union-attr]


def test_signals_and_flags_land_on_the_call_they_follow() -> None:
    a = AttemptSpans()
    a.llm(malformed=True)
    a.exception("KeyError")
    a.llm(finish="length")
    ep = build_episode(rollout(), a.spans, AdapterConfig()).episode
    assert ep is not None
    first, second = ep.transitions
    assert (first.tool_call_malformed, first.exceptions, first.truncated) == (True, ["KeyError"], False)
    assert (second.tool_call_malformed, second.exceptions, second.truncated) == (False, [], True)
    assert [s.name for s in ep.spans_following(first)] == [semconv.SPAN_EXCEPTION]


def test_signals_of_a_dropped_call_are_lost_but_its_rewards_move_to_the_kept_call_before() -> None:
    a = AttemptSpans()
    a.llm(agent="planner")
    a.llm(agent="helper")
    a.tool(success=False)
    a.reward(0.3, final=False)
    ep = build_episode(rollout(), a.spans, AdapterConfig(agents=["planner"])).episode
    assert ep is not None
    (planner,) = ep.transitions
    assert planner.tool_outcomes == []
    assert [r.value for r in planner.rewards] == [0.3]


def test_an_intermediate_reward_before_any_kept_call_is_counted_unattributed() -> None:
    a = AttemptSpans()
    a.reward(0.5, final=False)
    a.llm()
    result = build_episode(rollout(), a.spans, AdapterConfig())
    assert result.rewards_unattributed == 1
    assert result.episode.transitions[0].rewards == []  # type: ignore[union-attr]


def test_the_last_final_reward_wins_and_invalid_reward_spans_are_counted() -> None:
    a = AttemptSpans()
    a.llm()
    a.reward(0.2)
    a.reward(None, dimensions={"correct": 1.0, "format": 0.5})
    a.reward(None)  # no number at all
    a.add(semconv.SPAN_REWARD, {semconv.REWARD_DIMENSIONS: "{not json"})
    result = build_episode(rollout(reward=0.9), a.spans, AdapterConfig())
    assert result.episode is not None and result.episode.final_reward is not None
    assert result.episode.final_reward.dimensions == {"correct": 1.0, "format": 0.5}
    assert result.episode.rollout_reward == 0.9
    assert result.rewards_invalid == 2


def test_the_exception_that_ended_the_attempt_comes_from_the_attempt_or_the_root_span() -> None:
    a = AttemptSpans()
    a.llm()
    failed = rollout(status=RolloutStatus.FAILED, attempts=[attempt("a1", 1, AttemptStatus.FAILED, error="TypeError")])
    assert build_episode(failed, a.spans, AdapterConfig()).episode.uncaught_exception == "TypeError"  # type: ignore[union-attr]
    a.root(exception="ZeroDivisionError")
    unknown = rollout(status=RolloutStatus.FAILED, attempts=None)
    assert build_episode(unknown, a.spans, AdapterConfig()).episode.uncaught_exception == "ZeroDivisionError"  # type: ignore[union-attr]
    ok = build_episode(rollout(), a.spans[:1], AdapterConfig()).episode
    assert ok is not None and ok.uncaught_exception is None
