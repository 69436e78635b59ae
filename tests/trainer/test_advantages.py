"""Advantage estimators: hand-computed values, rollout-level baselines, skipped groups."""

from __future__ import annotations

import statistics

import pytest

from agentbolt.trainer.advantages import RolloutReturns, compute_advantages
from agentbolt.types import AdvantageConfig

EPS = 1e-6


def broadcast(rollout_id: str, group: str | None, g: float, calls: int = 1) -> RolloutReturns:
    return RolloutReturns(rollout_id, group, g, [g] * calls)


def test_grpo_normalises_by_the_group_mean_and_std() -> None:
    got = compute_advantages(
        [broadcast("a", "g", 1.0), broadcast("b", "g", 0.0), broadcast("c", "g", 0.5)], AdvantageConfig()
    )
    std = statistics.stdev([1.0, 0.0, 0.5])  # 0.5
    assert got.by_rollout == {
        "a": pytest.approx([0.5 / (std + EPS)]),
        "b": pytest.approx([-0.5 / (std + EPS)]),
        "c": pytest.approx([0.0]),
    }
    assert (got.groups_total, got.groups_skipped) == (1, 0)


def test_grpo_without_std_normalisation_subtracts_the_mean_only() -> None:
    got = compute_advantages(
        [broadcast("a", "g", 1.0), broadcast("b", "g", 0.0), broadcast("c", "g", 0.5)],
        AdvantageConfig(normalize_std=False),
    )
    assert got.by_rollout == {"a": pytest.approx([0.5]), "b": pytest.approx([-0.5]), "c": pytest.approx([0.0])}


def test_rloo_subtracts_the_mean_of_the_other_rollouts() -> None:
    got = compute_advantages(
        [broadcast("a", "g", 1.0), broadcast("b", "g", 0.0), broadcast("c", "g", 0.5)],
        AdvantageConfig(estimator="rloo"),
    )
    assert got.by_rollout == {
        "a": pytest.approx([1.0 - 0.25]),
        "b": pytest.approx([0.0 - 0.75]),
        "c": pytest.approx([0.5 - 0.5]),
    }


def test_reinforce_pp_normalises_over_the_whole_batch_ignoring_groups() -> None:
    rollouts = [broadcast("a", "g1", 1.0), broadcast("b", "g2", 0.0), broadcast("c", None, 0.0)]
    got = compute_advantages(rollouts, AdvantageConfig(estimator="reinforce_pp"))
    mean, std = 1 / 3, statistics.stdev([1.0, 0.0, 0.0])
    assert got.by_rollout["a"] == pytest.approx([(1.0 - mean) / (std + EPS)])
    assert got.by_rollout["b"] == got.by_rollout["c"] == pytest.approx([(0.0 - mean) / (std + EPS)])
    assert (got.groups_total, got.groups_skipped) == (1, 0)


@pytest.mark.parametrize("estimator", ["grpo", "rloo"])
def test_groups_with_equal_returns_and_single_rollouts_are_skipped_and_counted(estimator: str) -> None:
    rollouts = [
        broadcast("a", "same", 1.0),
        broadcast("b", "same", 1.0),
        broadcast("c", "mixed", 1.0),
        broadcast("d", "mixed", 0.0),
        broadcast("e", None, 1.0),  # no group: a group of its own
    ]
    got = compute_advantages(rollouts, AdvantageConfig(estimator=estimator))
    assert (got.groups_total, got.groups_skipped) == (3, 2)
    assert got.skipped_rollouts == {"a", "b", "e"}
    assert set(got.by_rollout) == {"c", "d"}


def test_reinforce_pp_skips_a_batch_whose_returns_are_all_equal() -> None:
    got = compute_advantages(
        [broadcast("a", "g", 0.5), broadcast("b", "h", 0.5)], AdvantageConfig(estimator="reinforce_pp")
    )
    assert (got.groups_skipped, got.by_rollout) == (1, {})


@pytest.mark.parametrize("estimator", ["grpo", "rloo", "reinforce_pp"])
def test_a_rollout_with_ten_calls_weighs_in_the_baseline_like_a_rollout_with_one(estimator: str) -> None:
    """Per-call normalisation would put the mean at 10/11 and punish the one-call rollout far more."""
    rollouts = [broadcast("many", "g", 1.0, calls=10), broadcast("one", "g", 0.0, calls=1)]
    got = compute_advantages(rollouts, AdvantageConfig(estimator=estimator))
    many, one = got.by_rollout["many"], got.by_rollout["one"]
    assert len(many) == 10 and len(set(many)) == 1
    assert many[0] == pytest.approx(-one[0])  # symmetric around a baseline of 0.5 (rloo: +1 and -1)


def test_per_transition_returns_are_measured_against_the_rollout_level_baseline() -> None:
    # Discounted credit: each transition has its own return; the baseline and scale come from G.
    rollouts = [
        RolloutReturns("a", "g", episode_return=1.0, returns=[0.5, 1.0]),
        RolloutReturns("b", "g", episode_return=0.0, returns=[-0.2, 0.0, 0.0]),
    ]
    got = compute_advantages(rollouts, AdvantageConfig())
    std = statistics.stdev([1.0, 0.0])
    assert got.by_rollout["a"] == pytest.approx([(0.5 - 0.5) / (std + EPS), (1.0 - 0.5) / (std + EPS)])
    assert got.by_rollout["b"] == pytest.approx([(-0.2 - 0.5) / (std + EPS), -0.5 / (std + EPS), -0.5 / (std + EPS)])


def test_a_rollout_without_transitions_still_counts_in_its_group() -> None:
    rollouts = [broadcast("a", "g", 1.0), RolloutReturns("empty", "g", 0.0, [])]
    got = compute_advantages(rollouts, AdvantageConfig(normalize_std=False))
    assert got.by_rollout == {"a": pytest.approx([0.5]), "empty": []}
