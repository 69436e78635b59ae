"""The rollout queue's transactions: enqueue, dequeue, heartbeat, finish, cancel and the watchdog's expiry.

Each function here is one transaction body: it takes the open ``Connection`` and does all of its work
there; ``Store`` runs it. Every status change is checked against :mod:`agentbolt.lifecycle`.

- The queue is FIFO by insertion order. A requeued rollout keeps its original place, so a retry
  runs before rollouts enqueued after it and is never starved.
- Cancelled and expired attempts clear the worker's ``current_attempt_id``; ``attempts_done``
  counts only attempts the worker itself finished.
- Row locks are taken in the order rollout, attempt, worker, so transactions do not deadlock.
- Finishing and releasing are idempotent: repeating the call that ended an attempt (same status, same
  error) answers the rollout again, so a worker may retry it after a lost response.
- A released attempt (its worker shut down, :func:`release_attempt`) ends as ``failed`` with
  ``error.type`` ``RELEASED_ERROR_TYPE``, requeues its rollout at once, and is not counted against
  ``max_attempts`` (:func:`_attempts_counted`).
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import sqlalchemy as sa
from sqlalchemy import bindparam
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from agentbolt.errors import Conflict, IllegalTransition, NotFound
from agentbolt.lifecycle import check_attempt_move, check_rollout_move, rollout_after_attempt
from agentbolt.store.records import attempt_from_row, attempt_status, new_id, rollout_from_row, to_json
from agentbolt.store.schema import attempts, rollouts, workers
from agentbolt.types import (
    Attempt,
    AttemptFinish,
    AttemptStatus,
    Claim,
    Rollout,
    RolloutConfig,
    RolloutCreate,
    RolloutMode,
    RolloutStatus,
)
from agentbolt.types.queue import RELEASED_ERROR_TYPE, AttemptRelease, ErrorInfo

_R = RolloutStatus
_A = AttemptStatus

# ---------------------------------------------------------------------------------------------
# Statements used on hot paths, built once (SQLAlchemy caches their compiled form).


def _claim_statement(with_modes: bool) -> sa.Update:
    """Mark the oldest queuing rollout running in one statement; returns its row, or nothing."""
    oldest = sa.select(rollouts.c.seq).where(rollouts.c.status == _R.QUEUING.value)
    if with_modes:
        oldest = oldest.where(rollouts.c.mode.in_(bindparam("modes", expanding=True)))
    # SKIP LOCKED: concurrent dequeuers (other processes too) pass over rows being claimed.
    # SQLite ignores FOR UPDATE; its writers are serialised anyway.
    oldest_seq = oldest.order_by(rollouts.c.seq).limit(1).with_for_update(skip_locked=True).scalar_subquery()
    return (
        sa.update(rollouts)
        .where(rollouts.c.seq == oldest_seq, rollouts.c.status == _R.QUEUING.value)
        .values(status=_R.RUNNING.value, num_attempts=rollouts.c.num_attempts + 1)
        .returning(*rollouts.c)
    )


_CLAIM_ANY = _claim_statement(with_modes=False)
_CLAIM_MODES = _claim_statement(with_modes=True)
_INSERT_ATTEMPT = sa.insert(attempts)


def _upsert_worker_statement(insert: Any) -> Any:
    """Record a worker's claim: a new worker row, or the known one's last-seen time and current attempt."""
    upsert = insert(workers)
    return upsert.on_conflict_do_update(
        index_elements=[workers.c.worker_id],
        set_={
            "last_seen_at": upsert.excluded.last_seen_at,
            "current_attempt_id": upsert.excluded.current_attempt_id,
        },
    )


# By dialect name: the upsert is written in each backend's own INSERT ... ON CONFLICT.
_UPSERT_WORKER = {
    "sqlite": _upsert_worker_statement(sqlite.insert),
    "postgresql": _upsert_worker_statement(postgresql.insert),
}
_LOCK_ROLLOUT = (
    sa.select(rollouts.c.status, rollouts.c.config, rollouts.c.num_attempts)
    .where(rollouts.c.rollout_id == bindparam("rollout_id"))
    .with_for_update()
)
# Conditional on "running", so an attempt is ended once, whoever (worker, watchdog, cancel) comes first.
_END_ATTEMPT = (
    sa.update(attempts)
    .where(
        attempts.c.attempt_id == bindparam("b_attempt_id"),
        attempts.c.rollout_id == bindparam("b_rollout_id"),
        attempts.c.status == _A.RUNNING.value,
    )
    .values(status=bindparam("b_status"), ended_at=bindparam("b_ended_at"), error=bindparam("b_error"))
)
_END_ATTEMPT_RETURNING = _END_ATTEMPT.returning(*attempts.c)
_HEARTBEAT = (
    sa.update(attempts)
    .where(
        attempts.c.attempt_id == bindparam("b_attempt_id"),
        attempts.c.rollout_id == bindparam("b_rollout_id"),
        attempts.c.status == _A.RUNNING.value,
    )
    .values(last_heartbeat_at=bindparam("b_now"))
    .returning(*attempts.c)
)
_MOVE_ROLLOUT = (
    sa.update(rollouts)
    .where(rollouts.c.rollout_id == bindparam("b_rollout_id"))
    .values(
        status=bindparam("b_status"),
        finished_at=bindparam("b_finished_at"),
        reward=sa.func.coalesce(bindparam("b_reward", type_=sa.Double), rollouts.c.reward),
    )
)
_MOVE_ROLLOUT_RETURNING = _MOVE_ROLLOUT.returning(*rollouts.c)
_WORKER_SEEN = (
    sa.update(workers).where(workers.c.worker_id == bindparam("b_worker_id")).values(last_seen_at=bindparam("b_now"))
)


def _release_worker(finished_by_worker: bool) -> sa.Update:
    """Clear the worker's current attempt (if it is this one); count attempts it finished itself."""
    values: dict[str, Any] = {
        "current_attempt_id": sa.case(
            (workers.c.current_attempt_id == bindparam("b_attempt_id"), sa.null()),
            else_=workers.c.current_attempt_id,
        )
    }
    if finished_by_worker:
        values["last_seen_at"] = bindparam("b_now")
        values["attempts_done"] = workers.c.attempts_done + 1
    return sa.update(workers).where(workers.c.worker_id == bindparam("b_worker_id")).values(**values)


_WORKER_FINISHED = _release_worker(finished_by_worker=True)
_WORKER_RELEASED = _release_worker(finished_by_worker=False)
_ENDED_ATTEMPT = sa.select(attempts.c.status, attempts.c.error, attempts.c.worker_id).where(
    attempts.c.attempt_id == bindparam("b_attempt_id"), attempts.c.rollout_id == bindparam("b_rollout_id")
)
_GET_ROLLOUT = sa.select(rollouts).where(rollouts.c.rollout_id == bindparam("b_rollout_id"))
# ErrorInfo serialises ``type`` first, so a released attempt's stored error starts with this.
_RELEASED_ERROR_PREFIX = '{"type":"' + RELEASED_ERROR_TYPE + '",%'
_COUNT_RELEASED = sa.select(sa.func.count()).where(
    attempts.c.rollout_id == bindparam("b_rollout_id"),
    attempts.c.status == _A.FAILED.value,
    attempts.c.error.like(_RELEASED_ERROR_PREFIX),
)


def _attempts_counted(
    conn: Connection, rollout_id: str, config: RolloutConfig, status: AttemptStatus, made: int
) -> int:
    """The attempts that count against ``max_attempts``: ``made`` less the released ones.

    Released attempts are only counted (one indexed query) when they could change the outcome.
    """
    if status.value not in config.retry_on or made < config.max_attempts:
        return made
    released: int = conn.execute(_COUNT_RELEASED, {"b_rollout_id": rollout_id}).scalar_one()
    return made - released


def _repeated_end(
    conn: Connection, rollout_id: str, attempt_id: str, status: AttemptStatus, error: str | None
) -> Rollout | None:
    """The rollout, when the attempt already ended exactly so (a retried finish or release); else None."""
    row = conn.execute(_ENDED_ATTEMPT, {"b_attempt_id": attempt_id, "b_rollout_id": rollout_id}).first()
    if row is None or row.status != status.value or row.error != error:
        return None
    return rollout_from_row(conn.execute(_GET_ROLLOUT, {"b_rollout_id": rollout_id}).one())


# ---------------------------------------------------------------------------------------------
# Transaction bodies


def enqueue(conn: Connection, rollouts_in: list[RolloutCreate]) -> list[Rollout]:
    """Insert the rollouts (status queuing). Raises Conflict on a duplicate id, BadInput on non-JSON values."""
    now = time.time()
    rows: list[dict[str, Any]] = []
    for item in rollouts_in:
        rollout_id = item.rollout_id or new_id("ro")
        what = f"rollout {rollout_id}"
        rows.append(
            {
                "rollout_id": rollout_id,
                "input": to_json(item.input, f"the input of {what}"),
                "mode": item.mode,
                "group_id": item.group_id,
                "model_version": item.model_version,
                "config": item.config.model_dump_json(),
                "metadata": to_json(item.metadata, f"the metadata of {what}"),
                "status": _R.QUEUING.value,
                "created_at": now,
                "num_attempts": 0,
                "next_span_seq": 0,
            }
        )
    chosen = [item.rollout_id for item in rollouts_in if item.rollout_id is not None]
    repeated = sorted(i for i, n in Counter(chosen).items() if n > 1)
    if repeated:
        raise Conflict(f"rollout id {', '.join(repeated)} appears more than once in the batch")
    if chosen:
        taken = conn.execute(sa.select(rollouts.c.rollout_id).where(rollouts.c.rollout_id.in_(chosen)))
        taken_ids = sorted(taken.scalars())
        if taken_ids:
            raise Conflict(f"rollout id {', '.join(taken_ids)} exists already; choose another id")
    conn.execute(sa.insert(rollouts), rows)
    return [
        Rollout(
            rollout_id=row["rollout_id"],
            input=item.input,
            mode=item.mode,
            group_id=item.group_id,
            model_version=item.model_version,
            config=item.config,
            metadata=item.metadata,
            status=_R.QUEUING,
            created_at=now,
        )
        for row, item in zip(rows, rollouts_in, strict=True)
    ]


def dequeue(conn: Connection, worker_id: str, modes: list[RolloutMode] | None) -> Claim | None:
    """Claim the oldest queuing rollout (of ``modes``, None: any) for ``worker_id`` with a new attempt."""
    now = time.time()  # taken in the transaction: it may have waited for another process's lock
    if modes is None:
        row = conn.execute(_CLAIM_ANY).first()
    else:
        row = conn.execute(_CLAIM_MODES, {"modes": list(modes)}).first()
    if row is None:
        return None
    check_rollout_move(row.rollout_id, _R.QUEUING, _R.RUNNING)
    config = RolloutConfig.model_validate_json(row.config)
    attempt = Attempt(
        attempt_id=new_id("at"),
        rollout_id=row.rollout_id,
        number=row.num_attempts,
        worker_id=worker_id,
        status=_A.RUNNING,
        started_at=now,
        last_heartbeat_at=now,
    )
    conn.execute(
        _INSERT_ATTEMPT,
        {
            "attempt_id": attempt.attempt_id,
            "rollout_id": attempt.rollout_id,
            "number": attempt.number,
            "worker_id": worker_id,
            "status": _A.RUNNING.value,
            "started_at": now,
            "last_heartbeat_at": now,
            "timeout_s": config.timeout_s,
            "heartbeat_timeout_s": config.heartbeat_timeout_s,
            "next_span_seq": 0,
        },
    )
    conn.execute(
        _UPSERT_WORKER[conn.dialect.name],
        {
            "worker_id": worker_id,
            "first_seen_at": now,
            "last_seen_at": now,
            "current_attempt_id": attempt.attempt_id,
            "attempts_done": 0,
        },
    )
    return Claim(rollout=rollout_from_row(row), attempt=attempt)


def heartbeat(conn: Connection, rollout_id: str, attempt_id: str, worker_id: str | None) -> Attempt:
    """Record that a running attempt's worker is alive (see ``Store.heartbeat`` for what it raises)."""
    now = time.time()
    row = conn.execute(_HEARTBEAT, {"b_attempt_id": attempt_id, "b_rollout_id": rollout_id, "b_now": now}).first()
    if row is None:
        status = attempt_status(conn, rollout_id, attempt_id)
        raise IllegalTransition(
            f"attempt {attempt_id} of rollout {rollout_id} is already {status.value}; "
            "a heartbeat is only accepted while it runs"
        )
    if worker_id is not None and row.worker_id is not None and worker_id != row.worker_id:
        raise Conflict(
            f"attempt {attempt_id} belongs to worker {row.worker_id}, not {worker_id}; "
            "a worker may only heartbeat attempts it dequeued"
        )
    if row.worker_id is not None:
        conn.execute(_WORKER_SEEN, {"b_worker_id": row.worker_id, "b_now": now})
    return attempt_from_row(row)


def _end_running_attempt(
    conn: Connection, rollout_id: str, attempt_id: str, status: AttemptStatus, error: str | None, now: float
) -> tuple[Any, Any]:
    """Lock the rollout and end its attempt if still running: (the locked rollout, the ended attempt or None).

    Raises NotFound for an unknown rollout.
    """
    locked = conn.execute(_LOCK_ROLLOUT, {"rollout_id": rollout_id}).first()
    if locked is None:
        raise NotFound(f"rollout {rollout_id} does not exist")
    ended = conn.execute(
        _END_ATTEMPT_RETURNING,
        {"b_attempt_id": attempt_id, "b_rollout_id": rollout_id, "b_status": status.value, "b_ended_at": now,
         "b_error": error},
    ).first()  # fmt: skip
    return locked, ended


def finish_attempt(conn: Connection, rollout_id: str, attempt_id: str, finish: AttemptFinish) -> Rollout:
    """End a running attempt and move its rollout on (see ``Store.finish_attempt``)."""
    new_status = AttemptStatus(finish.status)
    error = finish.error.model_dump_json() if finish.error is not None else None
    now = time.time()
    locked, ended = _end_running_attempt(conn, rollout_id, attempt_id, new_status, error, now)
    if ended is None:
        repeated = _repeated_end(conn, rollout_id, attempt_id, new_status, error)
        if repeated is not None:
            return repeated
        # Not running any more (or not this rollout's): say which.
        check_attempt_move(attempt_id, attempt_status(conn, rollout_id, attempt_id), new_status)
        raise IllegalTransition(f"attempt {attempt_id} of rollout {rollout_id} is not running")
    config = RolloutConfig.model_validate_json(locked.config)
    counted = _attempts_counted(conn, rollout_id, config, new_status, locked.num_attempts)
    next_status = rollout_after_attempt(config, new_status, counted)
    check_rollout_move(rollout_id, RolloutStatus(locked.status), next_status)
    row = conn.execute(
        _MOVE_ROLLOUT_RETURNING,
        {
            "b_rollout_id": rollout_id,
            "b_status": next_status.value,
            "b_finished_at": now if next_status.finished else None,
            "b_reward": finish.reward,
        },
    ).one()
    if ended.worker_id is not None:
        conn.execute(_WORKER_FINISHED, {"b_worker_id": ended.worker_id, "b_attempt_id": attempt_id, "b_now": now})
    return rollout_from_row(row)


def release_attempt(conn: Connection, rollout_id: str, attempt_id: str, release: AttemptRelease) -> Rollout:
    """Give a running attempt back and requeue its rollout at once (see ``Store.release_attempt``)."""
    error = ErrorInfo(type=RELEASED_ERROR_TYPE, message=release.reason).model_dump_json()
    locked, ended = _end_running_attempt(conn, rollout_id, attempt_id, _A.FAILED, error, time.time())
    if ended is None:
        repeated = _repeated_end(conn, rollout_id, attempt_id, _A.FAILED, error)
        if repeated is not None:
            return repeated
        status = attempt_status(conn, rollout_id, attempt_id)
        raise IllegalTransition(
            f"attempt {attempt_id} of rollout {rollout_id} is already {status.value}; "
            "only a running attempt can be released"
        )
    if release.worker_id is not None and ended.worker_id is not None and release.worker_id != ended.worker_id:
        raise Conflict(
            f"attempt {attempt_id} belongs to worker {ended.worker_id}, not {release.worker_id}; "
            "a worker may only release attempts it dequeued"
        )
    check_attempt_move(attempt_id, _A.RUNNING, _A.FAILED)
    check_rollout_move(rollout_id, RolloutStatus(locked.status), _R.QUEUING)
    row = conn.execute(
        _MOVE_ROLLOUT_RETURNING,
        {"b_rollout_id": rollout_id, "b_status": _R.QUEUING.value, "b_finished_at": None, "b_reward": None},
    ).one()
    if ended.worker_id is not None:
        conn.execute(_WORKER_RELEASED, {"b_worker_id": ended.worker_id, "b_attempt_id": attempt_id})
    return rollout_from_row(row)


def cancel(conn: Connection, rollout_id: str) -> Rollout:
    """Cancel a queuing or running rollout and its running attempt (see ``Store.cancel``)."""
    now = time.time()
    locked = conn.execute(_LOCK_ROLLOUT, {"rollout_id": rollout_id}).first()
    if locked is None:
        raise NotFound(f"rollout {rollout_id} does not exist")
    check_rollout_move(rollout_id, RolloutStatus(locked.status), _R.CANCELLED)
    running = conn.execute(
        sa.select(attempts.c.attempt_id, attempts.c.worker_id).where(
            attempts.c.rollout_id == rollout_id, attempts.c.status == _A.RUNNING.value
        )
    ).all()
    for attempt_row in running:
        check_attempt_move(attempt_row.attempt_id, _A.RUNNING, _A.CANCELLED)
        conn.execute(
            _END_ATTEMPT,
            {
                "b_attempt_id": attempt_row.attempt_id,
                "b_rollout_id": rollout_id,
                "b_status": _A.CANCELLED.value,
                "b_ended_at": now,
                "b_error": None,
            },
        )
        if attempt_row.worker_id is not None:
            conn.execute(
                _WORKER_RELEASED,
                {"b_worker_id": attempt_row.worker_id, "b_attempt_id": attempt_row.attempt_id},
            )
    row = conn.execute(
        _MOVE_ROLLOUT_RETURNING,
        {"b_rollout_id": rollout_id, "b_status": _R.CANCELLED.value, "b_finished_at": now, "b_reward": None},
    ).one()
    return rollout_from_row(row)


def expire_attempts(conn: Connection, now: float) -> list[Attempt]:
    """End running attempts past their timeout or heartbeat timeout at ``now`` (see ``Store.expire_attempts``)."""
    at = bindparam("now", now, type_=sa.Double)
    candidates = (
        sa.select(attempts, rollouts.c.status.label("rollout_status"), rollouts.c.config, rollouts.c.num_attempts)
        .join(rollouts, rollouts.c.rollout_id == attempts.c.rollout_id)
        .where(
            attempts.c.status == _A.RUNNING.value,
            sa.or_(
                at - attempts.c.started_at > attempts.c.timeout_s,
                at - attempts.c.last_heartbeat_at > attempts.c.heartbeat_timeout_s,
            ),
        )
        .order_by(attempts.c.rollout_id)
        # Rows held by another process's watchdog (or a finish) are theirs to deal with.
        .with_for_update(skip_locked=True)
    )
    rows = conn.execute(candidates).all()
    if not rows:
        return []
    ended: list[Attempt] = []
    attempt_updates: list[dict[str, Any]] = []
    rollout_updates: list[dict[str, Any]] = []
    worker_updates: list[dict[str, Any]] = []
    for row in rows:
        timed_out = row.timeout_s is not None and now - row.started_at > row.timeout_s
        status = _A.TIMEOUT if timed_out else _A.UNRESPONSIVE
        check_attempt_move(row.attempt_id, AttemptStatus(row.status), status)
        config = RolloutConfig.model_validate_json(row.config)
        counted = _attempts_counted(conn, row.rollout_id, config, status, row.num_attempts)
        next_status = rollout_after_attempt(config, status, counted)
        check_rollout_move(row.rollout_id, RolloutStatus(row.rollout_status), next_status)
        attempt_updates.append(
            {
                "b_attempt_id": row.attempt_id,
                "b_rollout_id": row.rollout_id,
                "b_status": status.value,
                "b_ended_at": now,
                "b_error": None,
            }
        )
        rollout_updates.append(
            {
                "b_rollout_id": row.rollout_id,
                "b_status": next_status.value,
                "b_finished_at": now if next_status.finished else None,
                "b_reward": None,
            }
        )
        if row.worker_id is not None:
            worker_updates.append({"b_worker_id": row.worker_id, "b_attempt_id": row.attempt_id})
        ended.append(attempt_from_row(row).model_copy(update={"status": status, "ended_at": now}))
    conn.execute(_END_ATTEMPT, attempt_updates)
    conn.execute(_MOVE_ROLLOUT, rollout_updates)
    if worker_updates:
        worker_updates.sort(key=lambda w: (w["b_worker_id"], w["b_attempt_id"]))
        conn.execute(_WORKER_RELEASED, worker_updates)
    return ended
