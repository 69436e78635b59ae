"""LightningRL credit assignment: each strategy, reward reduction and the final-reward rule."""

from __future__ import annotations

import pytest

from agentbolt.credit import assign_credit, final_reward, reward_value, transition_returns
from agentbolt.types import AttemptStatus, CreditConfig, RewardRecord
from tests.adapter.factories import episode, transition


def test_broadcast_gives_the_episode_return_to_every_transition() -> None:
    assert transition_returns(1.0, [0.0, -0.1, 0.2], "broadcast") == pytest.approx([1.1, 1.1, 1.1])


def test_discounted_sums_later_rewards_and_the_discounted_final_reward() -> None:
    # R_t = sum_{k>=t} g^(k-t) r_k + g^(T-1-t) F, with g = 0.5, F = 1, r = [0, -0.1, 0.2]
    expected = [
        0.0 + 0.5 * -0.1 + 0.25 * 0.2 + 0.25 * 1.0,
        -0.1 + 0.5 * 0.2 + 0.5 * 1.0,
        0.2 + 1.0,
    ]
    assert transition_returns(1.0, [0.0, -0.1, 0.2], "discounted", gamma=0.5) == pytest.approx(expected)


def test_discounted_with_gamma_one_and_no_intermediate_rewards_equals_broadcast() -> None:
    assert transition_returns(0.7, [0.0] * 4, "discounted", 1.0) == transition_returns(0.7, [0.0] * 4, "broadcast")


def test_final_only_gives_the_final_reward_to_the_last_transition_alone() -> None:
    assert transition_returns(1.0, [0.0, -0.1, 0.2], "final_only") == pytest.approx([0.0, -0.1, 1.2])


def test_an_episode_without_transitions_has_no_returns() -> None:
    for strategy in ("broadcast", "discounted", "final_only"):
        assert transition_returns(1.0, [], strategy) == []


def test_an_unknown_strategy_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown credit strategy"):
        transition_returns(1.0, [0.0], "everything")


def test_multi_dimensional_rewards_reduce_to_the_primary_or_the_weighted_sum() -> None:
    reward = RewardRecord(value=1.0, dimensions={"correct": 1.0, "format": 0.5}, primary="correct")
    assert reward_value(reward) == 1.0
    assert reward_value(reward, {"correct": 0.5, "format": 2.0, "absent": 9.0}) == pytest.approx(1.5)
    assert reward_value(RewardRecord(dimensions={"format": 0.25})) == 0.25
    assert reward_value(RewardRecord(value=0.3), {"correct": 1.0}) == 0.3  # no dimensions: its value


def test_the_final_reward_falls_back_to_the_rollout_then_timeout_then_missing_rule() -> None:
    config = CreditConfig(timeout_reward=-1.0, missing_reward=None)
    assert final_reward(episode([], final=0.25, rollout_reward=0.9), config) == 0.25
    assert final_reward(episode([], final=None, rollout_reward=0.9), config) == 0.9
    timed_out = episode([], final=None, status=AttemptStatus.TIMEOUT)
    assert final_reward(timed_out, config) == -1.0
    assert final_reward(timed_out, CreditConfig(timeout_reward=None, missing_reward=0.1)) == 0.1
    assert final_reward(episode([], final=None), config) is None
    assert final_reward(episode([], final=None), CreditConfig(missing_reward=0.0)) == 0.0


def test_assign_credit_adds_user_intermediate_rewards_and_air_per_transition() -> None:
    ep = episode([transition(0, rewards=[0.5, 0.25]), transition(1)], final=1.0)
    credit = assign_credit(ep, CreditConfig(strategy="discounted", gamma=0.5), air=[0.0, -0.2])
    assert credit is not None
    assert credit.intermediate == pytest.approx([0.75, -0.2])
    assert credit.returns == pytest.approx([0.75 + 0.5 * (-0.2 + 1.0), -0.2 + 1.0])
    assert credit.episode_return == pytest.approx(1.0 + 0.75 - 0.2)


def test_assign_credit_is_none_without_a_final_reward() -> None:
    assert assign_credit(episode([transition(0)], final=None), CreditConfig()) is None


def test_assign_credit_uses_reward_weights_for_the_final_reward() -> None:
    ep = episode([transition(0)])
    ep.final_reward = RewardRecord(value=1.0, dimensions={"correct": 1.0, "format": 0.0}, primary="correct")
    credit = assign_credit(ep, CreditConfig(reward_weights={"correct": 0.5, "format": 0.5}))
    assert credit is not None and credit.final == 0.5


def test_broadcast_own_gives_every_call_the_outcome_and_its_own_signals() -> None:
    assert transition_returns(1.0, [0.0, -0.1, 0.05], "broadcast_own") == [1.0, 0.9, 1.05]


def test_in_a_multi_turn_episode_a_failed_tool_call_gets_less_advantage_than_the_calls_that_worked() -> None:
    """The multi-turn calculator episode: call the tool (fails), call it again (works), answer. Under
    broadcast_own + AIR the failed call gets the least credit of the three; under plain broadcast all three
    calls share one return, so the failure is not singled out."""
    from agentbolt.credit import air_rewards
    from agentbolt.trainer.advantages import RolloutReturns, compute_advantages
    from agentbolt.types import AdvantageConfig, AIRConfig

    air_config = AIRConfig(tool_failure=-0.1, tool_success=0.05)
    solved = episode(
        [transition(0, tool_failures=1), transition(1, tool_successes=1), transition(2)], final=1.0, rollout_id="r1"
    )
    unsolved = episode([transition(0), transition(1)], final=0.0, rollout_id="r2")  # answered without the tool
    for strategy, failed_singled_out in (("broadcast_own", True), ("broadcast", False)):
        config = CreditConfig(strategy=strategy)
        credits = {}
        for ep in (solved, unsolved):
            air = [sum(a.values()) for a in air_rewards(ep, air_config)]
            credits[ep.rollout_id] = assign_credit(ep, config, air)
        advantages = compute_advantages(
            [RolloutReturns(rid, "g", c.episode_return, c.returns) for rid, c in credits.items() if c],
            AdvantageConfig(estimator="grpo"),
        ).by_rollout["r1"]
        failed, worked, answer = advantages
        if failed_singled_out:
            assert failed < answer < worked
        else:
            assert failed == worked == answer
