"""The one state machine for rollout and attempt statuses.

Every status change in the store goes through :func:`check_rollout_move` /
:func:`check_attempt_move`; an illegal move raises :class:`~agentbolt.errors.IllegalTransition`.

Rollout::

    queuing ──dequeue──► running ──attempt succeeded──► succeeded
       ▲                    │ ──attempt failed/timeout/unresponsive, no retry left──► failed
       └──── retry left ────┘
    queuing / running ──cancel──► cancelled

Attempt::

    running ──► succeeded | failed | timeout | unresponsive | cancelled   (all final)
"""

from __future__ import annotations

from agentbolt.errors import IllegalTransition
from agentbolt.types import AttemptStatus, RolloutConfig, RolloutStatus

_R = RolloutStatus
_A = AttemptStatus

ROLLOUT_MOVES: dict[RolloutStatus, frozenset[RolloutStatus]] = {
    _R.QUEUING: frozenset({_R.RUNNING, _R.CANCELLED}),
    _R.RUNNING: frozenset({_R.SUCCEEDED, _R.FAILED, _R.QUEUING, _R.CANCELLED}),
    _R.SUCCEEDED: frozenset(),
    _R.FAILED: frozenset(),
    _R.CANCELLED: frozenset(),
}

ATTEMPT_MOVES: dict[AttemptStatus, frozenset[AttemptStatus]] = {
    _A.RUNNING: frozenset({_A.SUCCEEDED, _A.FAILED, _A.TIMEOUT, _A.UNRESPONSIVE, _A.CANCELLED}),
    _A.SUCCEEDED: frozenset(),
    _A.FAILED: frozenset(),
    _A.TIMEOUT: frozenset(),
    _A.UNRESPONSIVE: frozenset(),
    _A.CANCELLED: frozenset(),
}


def check_rollout_move(rollout_id: str, old: RolloutStatus, new: RolloutStatus) -> None:
    """Raise IllegalTransition unless a rollout may move from ``old`` to ``new``."""
    if new not in ROLLOUT_MOVES[old]:
        raise IllegalTransition(f"rollout {rollout_id} is {old.value}; it cannot become {new.value}")


def check_attempt_move(attempt_id: str, old: AttemptStatus, new: AttemptStatus) -> None:
    """Raise IllegalTransition unless an attempt may move from ``old`` to ``new``."""
    if new not in ATTEMPT_MOVES[old]:
        raise IllegalTransition(f"attempt {attempt_id} is already {old.value}; it cannot become {new.value}")


def rollout_after_attempt(config: RolloutConfig, attempt_status: AttemptStatus, attempts_made: int) -> RolloutStatus:
    """The rollout's next status once an attempt ends with ``attempt_status``.

    Succeeded → succeeded; cancelled → cancelled; otherwise requeue while the outcome is in
    ``config.retry_on`` and fewer than ``config.max_attempts`` attempts were made, else failed.
    """
    if attempt_status is _A.SUCCEEDED:
        return _R.SUCCEEDED
    if attempt_status is _A.CANCELLED:
        return _R.CANCELLED
    if attempt_status is _A.RUNNING:
        raise ValueError("a running attempt has not ended")
    if attempt_status.value in config.retry_on and attempts_made < config.max_attempts:
        return _R.QUEUING
    return _R.FAILED
