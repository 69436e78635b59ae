"""prepare_batch: spans of finished rollouts -> samples with advantages, and the report of what was dropped."""

from __future__ import annotations

import statistics

import pytest

from agentbolt.trainer import prepare_batch
from agentbolt.types import AIRConfig, AttemptStatus, CreditConfig, Episode, RLConfig, RolloutStatus, Transition
from tests.adapter.factories import AttemptSpans, attempt, rollout

EPS = 1e-6


def _calls(rollout_id: str, n: int, reward: float | None, attempt_id: str = "a1") -> AttemptSpans:
    a = AttemptSpans(rollout_id=rollout_id, attempt_id=attempt_id)
    for i in range(n):
        a.llm(prompt=[1, 2, i], response=[10 + i, 11], logprobs=[-0.25, -0.5], agent="solver", version=4)
    if reward is not None:
        a.reward(reward)
    return a


def test_a_mixed_batch_gives_samples_of_the_informative_groups_and_counts_the_rest() -> None:
    timed_out = _calls("r2", 2, None, attempt_id="a1")
    retry = _calls("r2", 1, 0.0, attempt_id="a2")
    rollouts = [
        rollout("r1", group_id="g1"),  # 3 calls, reward 1
        rollout(
            "r2",
            group_id="g1",
            attempts=[attempt("a1", 1, AttemptStatus.TIMEOUT, "r2"), attempt("a2", 2, AttemptStatus.SUCCEEDED, "r2")],
        ),  # retried: its 1-call second attempt has reward 0
        rollout("r7", group_id="g1", reward=0.5),  # no LLM call, but its reward counts in g1's baseline
        rollout("r3", group_id="g2"),
        rollout("r4", group_id="g2"),  # g2: both 1.0, no signal
        rollout("r5", status=RolloutStatus.RUNNING),
        rollout("r6", group_id="g3"),  # no reward at all
    ]
    spans = {
        "r1": _calls("r1", 3, 1.0).spans,
        "r2": timed_out.spans + retry.spans,
        "r3": _calls("r3", 1, 1.0).spans,
        "r4": _calls("r4", 1, 1.0).spans,
        "r5": _calls("r5", 1, 1.0).spans,
        "r6": _calls("r6", 1, None).spans,
    }
    samples, report = prepare_batch(rollouts, spans, RLConfig())

    std = statistics.stdev([1.0, 0.0, 0.5])
    assert [(s.rollout_id, s.transition_index) for s in samples] == [("r1", 0), ("r1", 1), ("r1", 2), ("r2", 0)]
    assert [s.advantage for s in samples] == pytest.approx([0.5 / (std + EPS)] * 3 + [-0.5 / (std + EPS)])
    first = samples[0]
    assert (first.prompt_token_ids, first.response_token_ids, first.old_logprobs) == (
        [1, 2, 0],
        [10, 11],
        [-0.25, -0.5],
    )
    assert (first.model_version, first.agent_name, first.group_id, first.return_value) == (4, "solver", "g1", 1.0)

    assert (report.rollouts_total, report.rollouts_used) == (7, 2)
    assert report.rollouts_dropped == {"equal_group": 2, "not_finished": 1, "no_reward": 1, "no_transitions": 1}
    assert report.metrics()["transitions/kept"] == report.samples == 4
    assert report.transitions_dropped == {"equal_group": 2, "no_reward": 1}
    assert (report.earlier_attempts_dropped, report.earlier_attempt_spans_dropped) == (1, 2)
    assert (report.groups_total, report.groups_skipped) == (2, 1)
    assert report.reward_mean == pytest.approx(statistics.fmean([1.0, 0.0, 0.5, 1.0, 1.0]))
    assert report.agents == {"solver": 4} and report.agent_sources == {"header": 4}
    assert (report.prompt_tokens, report.response_tokens) == (12, 8)


def test_report_metrics_are_flat_numbers_with_drop_reasons() -> None:
    _, report = prepare_batch(
        [rollout("r1", group_id="g"), rollout("r2", group_id="g")],
        {"r1": _calls("r1", 1, 1.0).spans, "r2": _calls("r2", 1, None).spans},
        RLConfig(),
    )
    metrics = report.metrics()
    assert all(isinstance(v, float) for v in metrics.values())
    assert metrics["rollouts/dropped/no_reward"] == 1.0
    assert metrics["groups/skipped_frac"] == 1.0  # r1 alone in its group
    assert metrics["reward/mean"] == 1.0


def _two_step(rollout_id: str, first_tool_ok: bool) -> list:
    a = AttemptSpans(rollout_id=rollout_id)
    a.llm(tool_call_ids=["c1"])
    a.tool(call_id="c1", success=first_tool_ok)
    a.llm()
    a.reward(1.0)
    return a.spans


def test_air_turns_a_group_without_signal_into_credit_against_the_failing_call() -> None:
    rollouts = [rollout("bad", group_id="g"), rollout("good", group_id="g")]
    spans = {"bad": _two_step("bad", False), "good": _two_step("good", True)}
    config = RLConfig(credit=CreditConfig(strategy="discounted"), air=AIRConfig(enabled=False))
    samples, report = prepare_batch(rollouts, spans, config)
    assert samples == [] and report.groups_skipped == 1  # same final reward: nothing to learn

    config = RLConfig(credit=CreditConfig(strategy="discounted"), air=AIRConfig(tool_failure=-0.2))
    samples, report = prepare_batch(rollouts, spans, config)
    adv = {(s.rollout_id, s.transition_index): s.advantage for s in samples}
    assert adv[("bad", 0)] < 0 < adv[("bad", 1)]  # the call that made the failing tool call loses credit
    assert adv[("bad", 0)] < adv[("good", 0)]
    assert report.air == {"tool_failure": pytest.approx(-0.2)} and report.air_counts == {"tool_failure": 1}


def test_user_air_rules_reach_the_credit() -> None:
    def penalise_second_call(t: Transition, e: Episode) -> float:
        return -0.5 if t.index == 1 else 0.0

    rollouts = [rollout("x", group_id="g"), rollout("y", group_id="g")]
    spans = {"x": _two_step("x", True), "y": _calls("y", 1, 1.0).spans}
    samples, report = prepare_batch(rollouts, spans, RLConfig(), air_rules=[penalise_second_call])
    assert report.air == {"rule:penalise_second_call": -0.5}
    assert {s.rollout_id: s.advantage for s in samples}["x"] < 0


def test_a_timed_out_attempt_without_reward_is_trained_with_the_timeout_reward_and_penalty() -> None:
    rollouts = [
        rollout(
            "slow",
            group_id="g",
            status=RolloutStatus.FAILED,
            attempts=[attempt("a1", 1, AttemptStatus.TIMEOUT, "slow")],
        ),
        rollout("fast", group_id="g"),
    ]
    spans = {"slow": _calls("slow", 2, None).spans, "fast": _calls("fast", 1, 0.0).spans}
    samples, report = prepare_batch(rollouts, spans, RLConfig())
    assert [s.return_value for s in samples if s.rollout_id == "slow"] == pytest.approx([-0.2, -0.2])  # broadcast
    assert report.air == {"timeout": pytest.approx(-0.2)}
    dropped = prepare_batch(rollouts, spans, RLConfig(credit=CreditConfig(timeout_reward=None)))[1]
    assert dropped.rollouts_dropped["no_reward"] == 1


def test_rollouts_missing_from_the_span_map_are_dropped_not_raised() -> None:
    samples, report = prepare_batch([rollout("r1", reward=None, attempts=None)], {}, RLConfig())
    assert samples == [] and report.rollouts_dropped == {"no_spans": 1}


def test_tool_use_rates_count_episodes_with_a_well_formed_call_and_those_with_a_malformed_one() -> None:
    from agentbolt.trainer.batch import tool_use_rates
    from tests.adapter.factories import episode, transition

    def called(index: int) -> Transition:
        return transition(index, tool_successes=1).model_copy(update={"tool_calls_requested": 1})

    episodes = [
        episode([called(0), transition(1)]),  # called the tool, then answered: 2 policy calls
        episode([transition(0, malformed=True).model_copy(update={"tool_calls_requested": 0}), transition(1)]),
        episode([transition(0)]),  # answered without the tool
        episode([called(0), transition(1, malformed=True), transition(2)]),  # both: counts in each rate
    ]
    rates = tool_use_rates(episodes)
    assert rates == {"tools/use_rate": 0.5, "tools/malformed_rate": 0.5, "calls/per_rollout": 2.0}
    assert tool_use_rates([]) == {}
