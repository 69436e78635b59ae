"""Rollout, attempt, worker and model-version records: rows to types, and the transactions that read them.

Also the small helpers every transaction body shares: new ids, JSON text for stored values, and the
precise NotFound for an attempt id that is not one of a rollout's attempts.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy import bindparam, func
from sqlalchemy.engine import Connection

from agentbolt.errors import BadInput, Conflict, NotFound
from agentbolt.store.schema import attempts, model_versions, rollouts, workers
from agentbolt.types import (
    Attempt,
    AttemptStatus,
    ErrorInfo,
    ModelVersion,
    ModelVersionCreate,
    Page,
    Rollout,
    RolloutConfig,
    RolloutQuery,
    RolloutStatus,
    WaitResult,
    Worker,
)

# Compact JSON text of a value (raises TypeError or ValueError); one shared encoder: json.dumps with these
# options builds an encoder per call, which doubled the cost of a small value.
json_text = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode

_FINISHED = [s.value for s in RolloutStatus if s.finished]

_SELECT_ATTEMPTS_OF = (
    sa.select(attempts)
    .where(attempts.c.rollout_id.in_(bindparam("ids", expanding=True)))
    .order_by(attempts.c.rollout_id, attempts.c.number)
)


def new_id(prefix: str) -> str:
    """A fresh id such as ``ro-1f2e3d4c5b6a7980``."""
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


def to_json(value: Any, what: str) -> str:
    """``value`` as compact JSON text; raises BadInput naming ``what`` if it cannot be serialised."""
    try:
        return json_text(value)
    except (TypeError, ValueError) as e:
        raise BadInput(f"{what} is not JSON-serialisable: {e}") from None


# ---------------------------------------------------------------------------------------------
# Rows to types


def rollout_from_row(row: Any, attempt_list: list[Attempt] | None = None) -> Rollout:
    """A ``rollouts`` row as a Rollout, with ``attempt_list`` as its attempts (None: not loaded)."""
    return Rollout(
        rollout_id=row.rollout_id,
        input=json.loads(row.input),
        mode=row.mode,
        group_id=row.group_id,
        model_version=row.model_version,
        config=RolloutConfig.model_validate_json(row.config),
        metadata=json.loads(row.metadata),
        status=RolloutStatus(row.status),
        created_at=row.created_at,
        finished_at=row.finished_at,
        num_attempts=row.num_attempts,
        reward=row.reward,
        attempts=attempt_list,
    )


def attempt_from_row(row: Any) -> Attempt:
    """An ``attempts`` row as an Attempt."""
    return Attempt(
        attempt_id=row.attempt_id,
        rollout_id=row.rollout_id,
        number=row.number,
        worker_id=row.worker_id,
        status=AttemptStatus(row.status),
        started_at=row.started_at,
        ended_at=row.ended_at,
        last_heartbeat_at=row.last_heartbeat_at,
        error=ErrorInfo.model_validate_json(row.error) if row.error is not None else None,
    )


# ---------------------------------------------------------------------------------------------
# Lookups shared by the transaction bodies


def attempts_of(conn: Connection, rollout_ids: Sequence[str]) -> dict[str, list[Attempt]]:
    """The attempts of each rollout (oldest first); every given id is a key."""
    by_rollout: dict[str, list[Attempt]] = {rid: [] for rid in rollout_ids}
    if rollout_ids:
        for row in conn.execute(_SELECT_ATTEMPTS_OF, {"ids": list(by_rollout)}):
            by_rollout[row.rollout_id].append(attempt_from_row(row))
    return by_rollout


def attempt_status(conn: Connection, rollout_id: str, attempt_id: str) -> AttemptStatus:
    """The attempt's status; raises NotFound naming what is missing or mismatched."""
    status = conn.execute(
        sa.select(attempts.c.status).where(attempts.c.attempt_id == attempt_id, attempts.c.rollout_id == rollout_id)
    ).scalar()
    if status is None:
        raise attempt_not_found(conn, rollout_id, attempt_id)
    return AttemptStatus(status)


def attempt_not_found(conn: Connection, rollout_id: str, attempt_id: str) -> NotFound:
    """The precise error for an attempt id that is not one of the rollout's attempts."""
    if conn.execute(sa.select(rollouts.c.seq).where(rollouts.c.rollout_id == rollout_id)).first() is None:
        return NotFound(f"rollout {rollout_id} does not exist")
    owner = conn.execute(sa.select(attempts.c.rollout_id).where(attempts.c.attempt_id == attempt_id)).scalar()
    if owner is None:
        return NotFound(f"attempt {attempt_id} of rollout {rollout_id} does not exist")
    return NotFound(f"attempt {attempt_id} belongs to rollout {owner}, not to rollout {rollout_id}")


def rollouts_not_found(given: Sequence[str], found: set[str]) -> NotFound:
    """NotFound naming the ids of ``given`` (in its order) that are not in ``found``."""
    missing = list(dict.fromkeys(i for i in given if i not in found))
    return NotFound(f"rollout {', '.join(missing)} does not exist")


# ---------------------------------------------------------------------------------------------
# Transaction bodies: rollouts and attempts


def get_rollout(conn: Connection, rollout_id: str, with_attempts: bool) -> Rollout:
    row = conn.execute(sa.select(rollouts).where(rollouts.c.rollout_id == rollout_id)).first()
    if row is None:
        raise NotFound(f"rollout {rollout_id} does not exist")
    return rollout_from_row(row, attempts_of(conn, [rollout_id])[rollout_id] if with_attempts else None)


def get_rollouts(conn: Connection, rollout_ids: list[str], with_attempts: bool) -> list[Rollout]:
    rows = conn.execute(sa.select(rollouts).where(rollouts.c.rollout_id.in_(rollout_ids))).all()
    by_id = {r.rollout_id: r for r in rows}
    if len(by_id) < len(set(rollout_ids)):
        raise rollouts_not_found(rollout_ids, set(by_id))
    if not with_attempts:
        return [rollout_from_row(by_id[i]) for i in rollout_ids]
    by_rollout = attempts_of(conn, list(by_id))
    return [rollout_from_row(by_id[i], by_rollout[i]) for i in rollout_ids]


def get_attempt(conn: Connection, rollout_id: str, attempt_id: str) -> Attempt:
    row = conn.execute(
        sa.select(attempts).where(attempts.c.attempt_id == attempt_id, attempts.c.rollout_id == rollout_id)
    ).first()
    if row is None:
        raise attempt_not_found(conn, rollout_id, attempt_id)
    return attempt_from_row(row)


def query_rollouts(conn: Connection, query: RolloutQuery) -> Page[Rollout]:
    conditions: list[sa.ColumnElement[bool]] = []
    if query.status is not None:
        conditions.append(rollouts.c.status.in_([s.value for s in query.status]))
    if query.mode is not None:
        conditions.append(rollouts.c.mode == query.mode)
    if query.group_id is not None:
        conditions.append(rollouts.c.group_id == query.group_id)
    if query.rollout_ids is not None:
        conditions.append(rollouts.c.rollout_id.in_(query.rollout_ids))
    page = sa.select(rollouts).where(*conditions).order_by(rollouts.c.seq).limit(query.limit).offset(query.offset)
    count = sa.select(func.count()).select_from(rollouts).where(*conditions)
    rows = conn.execute(page).all()
    total = conn.execute(count).scalar_one()
    if not query.with_attempts:
        return Page[Rollout](
            items=[rollout_from_row(r) for r in rows], total=total, limit=query.limit, offset=query.offset
        )
    by_rollout = attempts_of(conn, [r.rollout_id for r in rows])
    items = [rollout_from_row(r, by_rollout[r.rollout_id]) for r in rows]
    return Page[Rollout](items=items, total=total, limit=query.limit, offset=query.offset)


def unfinished_rollouts(conn: Connection, among: list[str]) -> list[str]:
    """The ids of ``among`` (in its order) whose rollout has not finished. Raises NotFound for an unknown id."""
    rows = conn.execute(
        sa.select(rollouts.c.rollout_id, rollouts.c.status).where(rollouts.c.rollout_id.in_(among))
    ).all()
    if len(rows) < len(among):
        raise rollouts_not_found(among, {r.rollout_id for r in rows})
    done = {r.rollout_id for r in rows if r.status in _FINISHED}
    return [i for i in among if i not in done]


def wait_result(conn: Connection, rollout_ids: list[str]) -> WaitResult:
    """The finished rollouts and the ids still pending, both in the order given."""
    rows = conn.execute(sa.select(rollouts).where(rollouts.c.rollout_id.in_(rollout_ids))).all()
    by_id = {r.rollout_id: r for r in rows}
    return WaitResult(
        finished=[rollout_from_row(by_id[i]) for i in rollout_ids if by_id[i].status in _FINISHED],
        pending=[i for i in rollout_ids if by_id[i].status not in _FINISHED],
    )


# ---------------------------------------------------------------------------------------------
# Transaction bodies: workers and model versions


def list_workers(conn: Connection) -> list[Worker]:
    rows = conn.execute(sa.select(workers).order_by(workers.c.first_seen_at, workers.c.worker_id))
    return [
        Worker(
            worker_id=r.worker_id,
            first_seen_at=r.first_seen_at,
            last_seen_at=r.last_seen_at,
            current_attempt_id=r.current_attempt_id,
            attempts_done=r.attempts_done,
        )
        for r in rows
    ]


def add_model_version(conn: Connection, record: ModelVersionCreate) -> ModelVersion:
    created = ModelVersion(**record.model_dump(), created_at=time.time())
    values = {
        "version": created.version,
        "model": created.model,
        "checkpoint": created.checkpoint,
        "metadata": to_json(created.metadata, f"the metadata of model version {created.version}"),
        "created_at": created.created_at,
    }
    taken = conn.execute(sa.select(model_versions.c.version).where(model_versions.c.version == created.version))
    if taken.first() is not None:
        raise Conflict(f"model version {created.version} is recorded already; versions only go up")
    conn.execute(sa.insert(model_versions).values(**values))
    return created


def latest_model_version(conn: Connection) -> ModelVersion | None:
    row = conn.execute(sa.select(model_versions).order_by(model_versions.c.version.desc()).limit(1)).first()
    if row is None:
        return None
    return ModelVersion(
        version=row.version,
        model=row.model,
        checkpoint=row.checkpoint,
        metadata=json.loads(row.metadata),
        created_at=row.created_at,
    )
