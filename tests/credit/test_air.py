"""AIR: each runtime signal becomes an intermediate reward on the right transition."""

from __future__ import annotations

import pytest

from agentbolt.adapter import build_episode
from agentbolt.credit import air_rewards, assign_credit
from agentbolt.errors import BadInput
from agentbolt.types import AdapterConfig, AIRConfig, AttemptStatus, CreditConfig, Episode, Transition
from tests.adapter.factories import AttemptSpans, episode, rollout, transition

CONFIG = AIRConfig(tool_failure=-0.1, malformed_tool_call=-0.2, exception=-0.3, truncation=-0.4, timeout=-0.5)


@pytest.mark.parametrize(
    ("middle", "signal", "value"),
    [
        (transition(1, tool_failures=2, tool_successes=1), "tool_failure", -0.2),
        (transition(1, malformed=True), "malformed_tool_call", -0.2),
        (transition(1, exceptions=["KeyError"]), "exception", -0.3),
        (transition(1, finish="length"), "truncation", -0.4),
    ],
)
def test_each_call_signal_rewards_only_the_call_it_follows(middle: Transition, signal: str, value: float) -> None:
    rewards = air_rewards(episode([transition(0), middle, transition(2)]), CONFIG)
    assert rewards[0] == {} and rewards[2] == {}
    assert rewards[1] == {signal: pytest.approx(value)}


def test_a_timeout_penalises_the_last_call() -> None:
    ep = episode([transition(0), transition(1)], final=None, status=AttemptStatus.TIMEOUT)
    assert air_rewards(ep, CONFIG) == [{}, {"timeout": -0.5}]


def test_an_uncaught_exception_penalises_the_last_call() -> None:
    ep = episode([transition(0), transition(1, exceptions=["KeyError"])], uncaught_exception="TypeError")
    assert air_rewards(ep, CONFIG) == [{}, {"exception": pytest.approx(-0.6)}]


def test_a_zero_weight_disables_a_signal_and_enabled_false_disables_all() -> None:
    ep = episode([transition(0, tool_failures=1, finish="length")])
    assert air_rewards(ep, CONFIG.model_copy(update={"tool_failure": 0.0})) == [{"truncation": -0.4}]
    assert air_rewards(ep, CONFIG.model_copy(update={"enabled": False}), [lambda t, e: 1.0]) == [{}]


def test_user_rules_add_named_rewards() -> None:
    def long_answer(t: Transition, e: Episode) -> float:
        return -0.05 * (len(t.response_token_ids) > 3)

    ep = episode([transition(0, response_len=2), transition(1, response_len=5)])
    assert air_rewards(ep, AIRConfig(), [long_answer]) == [{}, {"rule:long_answer": pytest.approx(-0.05)}]


def test_a_rule_that_returns_a_non_number_is_refused_with_its_name() -> None:
    def broken(t: Transition, e: Episode) -> float:
        return float("nan")

    with pytest.raises(BadInput, match="broken"):
        air_rewards(episode([transition(0)]), AIRConfig(), [broken])


def test_air_moves_credit_away_from_the_call_whose_tool_call_failed() -> None:
    """Three calls, same final reward; the second call's tool call fails. Discounted credit with AIR
    gives that call (and only the calls up to it) less; without AIR all three calls are credited alike."""
    a = AttemptSpans()
    a.llm(tool_call_ids=["c1"])
    a.tool(call_id="c1", success=True)
    a.llm(tool_call_ids=["c2"])
    a.tool(call_id="c2", success=False)
    a.llm()
    a.reward(1.0)
    ep = build_episode(rollout(), a.spans, AdapterConfig()).episode
    assert ep is not None
    credit = CreditConfig(strategy="discounted", gamma=1.0)

    without = assign_credit(ep, credit, [sum(r.values()) for r in air_rewards(ep, AIRConfig(enabled=False))])
    with_air = assign_credit(ep, credit, [sum(r.values()) for r in air_rewards(ep, AIRConfig(tool_failure=-0.3))])
    assert without is not None and with_air is not None
    assert without.returns == pytest.approx([1.0, 1.0, 1.0])
    assert with_air.returns == pytest.approx([0.7, 0.7, 1.0])
    # final_only keeps the penalty on the failing call alone.
    only = assign_credit(
        ep,
        CreditConfig(strategy="final_only"),
        [sum(r.values()) for r in air_rewards(ep, AIRConfig(tool_failure=-0.3))],
    )
    assert only is not None and only.returns == pytest.approx([0.0, -0.3, 1.0])


def test_tool_success_rewards_each_successful_call_when_switched_on() -> None:
    ep = episode([transition(0, tool_successes=2, tool_failures=1), transition(1)])
    assert air_rewards(ep, AIRConfig())[0] == {"tool_failure": -0.1}  # off by default
    rewards = air_rewards(ep, AIRConfig(tool_success=0.05))
    assert rewards[0] == pytest.approx({"tool_failure": -0.1, "tool_success": 0.1})
    assert rewards[1] == {}
