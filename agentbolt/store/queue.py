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
from types import SimpleNamespace
from typing import Any

import sqlalchemy as sa
from sqlalchemy import bindparam
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from agentbolt.errors import AgentboltError, Conflict, IllegalTransition, NotFound
from agentbolt.lifecycle import check_attempt_move, check_rollout_move, rollout_after_attempt
from agentbolt.store.records import (
    attempt_from_row,
    attempt_not_found,
    attempt_status,
    new_id,
    rollout_from_row,
    to_json,
)
from agentbolt.store.schema import attempts, rollouts, workers
from agentbolt.types import (
    Attempt,
    AttemptStatus,
    Claim,
    Rollout,
    RolloutConfig,
    RolloutCreate,
    RolloutMode,
    RolloutStatus,
)
from agentbolt.types.queue import (
    RELEASED_ERROR_TYPE,
    AttemptFinishItem,
    AttemptHeartbeat,
    AttemptRelease,
    ErrorInfo,
)

_R = RolloutStatus
_A = AttemptStatus

# ---------------------------------------------------------------------------------------------
# Statements used on hot paths, built once (SQLAlchemy caches their compiled form).


def _claim_statement(with_modes: bool) -> sa.Update:
    """Mark the ``n`` oldest queuing rollouts running in one statement; returns their rows (any order)."""
    oldest = sa.select(rollouts.c.seq).where(rollouts.c.status == _R.QUEUING.value)
    if with_modes:
        oldest = oldest.where(rollouts.c.mode.in_(bindparam("modes", expanding=True)))
    # SKIP LOCKED: concurrent dequeuers (other processes too) pass over rows being claimed.
    # SQLite ignores FOR UPDATE; its writers are serialised anyway.
    # A materialised CTE, read once: PostgreSQL may run a plain ``IN (subquery)`` again for later rows,
    # and each run, seeing the rows it just claimed as running, would pick the next ones (beyond ``n``).
    picked = (
        oldest.order_by(rollouts.c.seq)
        .limit(bindparam("n"))
        .with_for_update(skip_locked=True)
        .cte("picked")
        .prefix_with("MATERIALIZED")
    )
    return (
        sa.update(rollouts)
        .where(rollouts.c.seq.in_(sa.select(picked.c.seq)), rollouts.c.status == _R.QUEUING.value)
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
    .where(attempts.c.attempt_id == bindparam("b_attempt_id"), attempts.c.status == _A.RUNNING.value)
    .values(last_heartbeat_at=bindparam("b_now"))
)
# The rows a batch of finishes or heartbeats works on: rollouts locked (in id order), then their attempts.
_LOCK_ROLLOUTS = (
    sa.select(rollouts)
    .where(rollouts.c.rollout_id.in_(bindparam("ids", expanding=True)))
    .order_by(rollouts.c.rollout_id)
    .with_for_update()
)
_ATTEMPTS_BY_ID = sa.select(attempts).where(attempts.c.attempt_id.in_(bindparam("ids", expanding=True)))
_SET_ROLLOUT_OUTCOME = (
    sa.update(rollouts)
    .where(rollouts.c.rollout_id == bindparam("b_rollout_id"))
    .values(status=bindparam("b_status"), finished_at=bindparam("b_finished_at"), reward=bindparam("b_reward"))
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


def dequeue(conn: Connection, worker_ids: list[str], modes: list[RolloutMode] | None) -> list[Claim]:
    """Claim the oldest queuing rollouts (of ``modes``, None: any), at most one for each of ``worker_ids``
    (distinct), each with a new attempt: the oldest goes to the first worker id. Fewer when fewer are queued."""
    now = time.time()  # taken in the transaction: it may have waited for another process's lock
    if modes is None:
        claimed = conn.execute(_CLAIM_ANY, {"n": len(worker_ids)})
    else:
        claimed = conn.execute(_CLAIM_MODES, {"n": len(worker_ids), "modes": list(modes)})
    rows = sorted(claimed, key=lambda r: r.seq)  # RETURNING follows no order
    if not rows:
        return []
    claims: list[Claim] = []
    new_attempts: list[dict[str, Any]] = []
    seen: list[dict[str, Any]] = []
    for row, worker_id in zip(rows, worker_ids[: len(rows)], strict=True):
        check_rollout_move(row.rollout_id, _R.QUEUING, _R.RUNNING)
        rollout = rollout_from_row(row)
        attempt = Attempt(
            attempt_id=new_id("at"),
            rollout_id=row.rollout_id,
            number=row.num_attempts,
            worker_id=worker_id,
            status=_A.RUNNING,
            started_at=now,
            last_heartbeat_at=now,
        )
        new_attempts.append(
            {
                "attempt_id": attempt.attempt_id,
                "rollout_id": attempt.rollout_id,
                "number": attempt.number,
                "worker_id": worker_id,
                "status": _A.RUNNING.value,
                "started_at": now,
                "last_heartbeat_at": now,
                "timeout_s": rollout.config.timeout_s,
                "heartbeat_timeout_s": rollout.config.heartbeat_timeout_s,
                "next_span_seq": 0,
            }
        )
        seen.append(
            {
                "worker_id": worker_id,
                "first_seen_at": now,
                "last_seen_at": now,
                "current_attempt_id": attempt.attempt_id,
                "attempts_done": 0,
            }
        )
        claims.append(Claim(rollout=rollout, attempt=attempt))
    conn.execute(_INSERT_ATTEMPT, new_attempts)
    seen.sort(key=lambda w: w["worker_id"])  # row locks in one order
    conn.execute(_UPSERT_WORKER[conn.dialect.name], seen)
    return claims


def heartbeat(conn: Connection, beats: list[AttemptHeartbeat]) -> list[Attempt | AgentboltError]:
    """Record that running attempts' workers are alive: each beat's attempt, or why it was refused, in order.

    A beat is refused with NotFound (unknown rollout or attempt, or the attempt is not the rollout's),
    IllegalTransition (the attempt has ended) or Conflict (``worker_id`` is not the attempt's worker).
    """
    now = time.time()
    found = {r.attempt_id: r for r in conn.execute(_ATTEMPTS_BY_ID, {"ids": sorted({b.attempt_id for b in beats})})}
    outcomes: list[Attempt | AgentboltError] = []
    alive: set[str] = set()
    workers_seen: set[str] = set()
    for beat in beats:
        try:
            row = _beating(conn, beat, found.get(beat.attempt_id))
        except AgentboltError as exc:
            outcomes.append(exc)
            continue
        alive.add(beat.attempt_id)
        if row.worker_id is not None:
            workers_seen.add(row.worker_id)
        outcomes.append(attempt_from_row(row).model_copy(update={"last_heartbeat_at": now}))
    if alive:
        conn.execute(_HEARTBEAT, [{"b_attempt_id": a, "b_now": now} for a in sorted(alive)])
    if workers_seen:
        conn.execute(_WORKER_SEEN, [{"b_worker_id": w, "b_now": now} for w in sorted(workers_seen)])
    return outcomes


def _beating(conn: Connection, beat: AttemptHeartbeat, row: Any) -> Any:
    """The row of the attempt ``beat`` is for, given as ``row`` (None: no attempt of that id); raises why the
    beat is refused, if it is."""
    rollout_id, attempt_id = beat.rollout_id, beat.attempt_id
    if row is None or row.rollout_id != rollout_id:
        raise attempt_not_found(conn, rollout_id, attempt_id)
    if row.status != _A.RUNNING.value:
        raise IllegalTransition(
            f"attempt {attempt_id} of rollout {rollout_id} is already {row.status}; "
            "a heartbeat is only accepted while it runs"
        )
    if beat.worker_id is not None and row.worker_id is not None and beat.worker_id != row.worker_id:
        raise Conflict(
            f"attempt {attempt_id} belongs to worker {row.worker_id}, not {beat.worker_id}; "
            "a worker may only heartbeat attempts it dequeued"
        )
    return row


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


def finish_attempts(conn: Connection, finishes: list[AttemptFinishItem]) -> list[Rollout | AgentboltError]:
    """End running attempts and move their rollouts on (see ``Store.finish_attempt``): each finish's rollout, or
    why it was refused, in order. The rows are read (rollouts locked) once and written once for the whole batch."""
    now = time.time()
    rollout_ids = sorted({f.rollout_id for f in finishes})
    attempt_ids = sorted({f.attempt_id for f in finishes})
    # Mutable copies: a later finish of the batch sees what an earlier one changed.
    locked = {r.rollout_id: SimpleNamespace(**r._mapping) for r in conn.execute(_LOCK_ROLLOUTS, {"ids": rollout_ids})}
    found = {r.attempt_id: SimpleNamespace(**r._mapping) for r in conn.execute(_ATTEMPTS_BY_ID, {"ids": attempt_ids})}
    outcomes: list[Rollout | AgentboltError] = []
    ended: dict[str, dict[str, Any]] = {}
    moved: dict[str, dict[str, Any]] = {}
    released: list[dict[str, Any]] = []
    for finish in finishes:
        try:
            rollout, attempt = _finish(conn, finish, locked, found, now)
        except AgentboltError as exc:
            outcomes.append(exc)
            continue
        outcomes.append(rollout_from_row(rollout))
        if attempt is None:  # a repeated finish: nothing changes
            continue
        ended[attempt.attempt_id] = {
            "b_attempt_id": attempt.attempt_id,
            "b_rollout_id": attempt.rollout_id,
            "b_status": attempt.status,
            "b_ended_at": now,
            "b_error": attempt.error,
        }
        moved[rollout.rollout_id] = {
            "b_rollout_id": rollout.rollout_id,
            "b_status": rollout.status,
            "b_finished_at": rollout.finished_at,
            "b_reward": rollout.reward,
        }
        if attempt.worker_id is not None:
            released.append({"b_worker_id": attempt.worker_id, "b_attempt_id": attempt.attempt_id, "b_now": now})
    # In key order, so concurrent batches (PostgreSQL) take the row locks in one order.
    if ended:
        conn.execute(_END_ATTEMPT, [ended[a] for a in sorted(ended)])
    if moved:
        conn.execute(_SET_ROLLOUT_OUTCOME, [moved[r] for r in sorted(moved)])
    if released:
        released.sort(key=lambda w: (w["b_worker_id"], w["b_attempt_id"]))
        conn.execute(_WORKER_FINISHED, released)
    return outcomes


def _finish(
    conn: Connection,
    finish: AttemptFinishItem,
    locked: dict[str, SimpleNamespace],
    found: dict[str, SimpleNamespace],
    now: float,
) -> tuple[SimpleNamespace, SimpleNamespace | None]:
    """Apply one finish to the batch's rows: (its rollout, its attempt once ended here, or None for a repeat).

    Raises NotFound for an unknown rollout or attempt, IllegalTransition if the attempt ended otherwise.
    """
    rollout_id, attempt_id = finish.rollout_id, finish.attempt_id
    new_status = AttemptStatus(finish.status)
    error = finish.error.model_dump_json() if finish.error is not None else None
    check_attempt_move(attempt_id, _A.RUNNING, new_status)
    rollout = locked.get(rollout_id)
    if rollout is None:
        raise NotFound(f"rollout {rollout_id} does not exist")
    attempt = found.get(attempt_id)
    if attempt is None or attempt.rollout_id != rollout_id:
        raise attempt_not_found(conn, rollout_id, attempt_id)
    if attempt.status != _A.RUNNING.value:
        if attempt.status == new_status.value and attempt.error == error:
            return rollout, None  # the finish that ended it, repeated (a retry after a lost answer)
        check_attempt_move(attempt_id, AttemptStatus(attempt.status), new_status)
        raise IllegalTransition(f"attempt {attempt_id} of rollout {rollout_id} is not running")
    config = RolloutConfig.model_validate_json(rollout.config)
    counted = _attempts_counted(conn, rollout_id, config, new_status, rollout.num_attempts)
    next_status = rollout_after_attempt(config, new_status, counted)
    check_rollout_move(rollout_id, RolloutStatus(rollout.status), next_status)
    attempt.status, attempt.error = new_status.value, error
    rollout.status = next_status.value
    rollout.finished_at = now if next_status.finished else None
    if finish.reward is not None:
        rollout.reward = finish.reward
    return rollout, attempt


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
