"""The rollout/attempt state machine: which moves are legal, and where a rollout goes after an attempt."""

from __future__ import annotations

import pytest

from agentbolt.errors import IllegalTransition
from agentbolt.lifecycle import check_attempt_move, check_rollout_move, rollout_after_attempt
from agentbolt.types import AttemptStatus, RolloutConfig, RolloutStatus

R, A = RolloutStatus, AttemptStatus

LEGAL_ROLLOUT_MOVES = {
    (R.QUEUING, R.RUNNING),  # dequeued
    (R.QUEUING, R.CANCELLED),
    (R.RUNNING, R.SUCCEEDED),
    (R.RUNNING, R.FAILED),
    (R.RUNNING, R.QUEUING),  # requeued for another attempt
    (R.RUNNING, R.CANCELLED),
}


@pytest.mark.parametrize("old", list(R))
@pytest.mark.parametrize("new", list(R))
def test_rollout_moves_only_along_the_diagram(old: RolloutStatus, new: RolloutStatus) -> None:
    if (old, new) in LEGAL_ROLLOUT_MOVES:
        check_rollout_move("ro-1", old, new)
    else:
        with pytest.raises(IllegalTransition, match=f"rollout ro-1 is {old.value}; it cannot become {new.value}"):
            check_rollout_move("ro-1", old, new)


@pytest.mark.parametrize("old", list(A))
@pytest.mark.parametrize("new", list(A))
def test_attempt_ends_once_and_never_moves_again(old: AttemptStatus, new: AttemptStatus) -> None:
    if old is A.RUNNING and new is not A.RUNNING:
        check_attempt_move("at-1", old, new)
    else:
        with pytest.raises(IllegalTransition, match=f"attempt at-1 is already {old.value}"):
            check_attempt_move("at-1", old, new)


def test_finished_statuses_are_exactly_the_final_ones() -> None:
    assert {s for s in R if s.finished} == {R.SUCCEEDED, R.FAILED, R.CANCELLED}
    assert {s for s in A if not s.finished} == {A.RUNNING}


def test_a_succeeded_or_cancelled_attempt_decides_the_rollout_whatever_the_retries() -> None:
    config = RolloutConfig(max_attempts=5, retry_on=["failed", "timeout", "unresponsive"])
    assert rollout_after_attempt(config, A.SUCCEEDED, 1) is R.SUCCEEDED
    assert rollout_after_attempt(config, A.CANCELLED, 1) is R.CANCELLED


@pytest.mark.parametrize("outcome", [A.FAILED, A.TIMEOUT, A.UNRESPONSIVE])
def test_a_retryable_outcome_requeues_until_the_attempts_run_out(outcome: AttemptStatus) -> None:
    config = RolloutConfig(max_attempts=3, retry_on=[outcome.value])
    assert rollout_after_attempt(config, outcome, 1) is R.QUEUING
    assert rollout_after_attempt(config, outcome, 2) is R.QUEUING
    assert rollout_after_attempt(config, outcome, 3) is R.FAILED


def test_an_outcome_not_in_retry_on_fails_the_rollout_at_once() -> None:
    config = RolloutConfig(max_attempts=3, retry_on=["timeout"])
    assert rollout_after_attempt(config, A.FAILED, 1) is R.FAILED
    assert rollout_after_attempt(config, A.TIMEOUT, 1) is R.QUEUING


def test_default_config_retries_nothing() -> None:
    # One attempt by default: even a timeout (retryable by default) fails the rollout.
    assert rollout_after_attempt(RolloutConfig(), A.TIMEOUT, 1) is R.FAILED


def test_a_running_attempt_has_no_outcome_yet() -> None:
    with pytest.raises(ValueError, match="has not ended"):
        rollout_after_attempt(RolloutConfig(), A.RUNNING, 1)
