"""The durable store: rollout queue, attempts, spans, workers and model versions.

One SQLAlchemy 2 Core implementation; the backend is chosen by URL:
``sqlite+aiosqlite:///path.db`` (embedded default, WAL mode) or ``postgresql+asyncpg://...``.

Every operation is one transaction, written once as a synchronous function of a SQLAlchemy
``Connection`` (the ``_txn_*`` functions and the closures named ``txn``). PostgreSQL runs it
through asyncpg with ``AsyncConnection.run_sync``. SQLite runs it in one piece on the stdlib
driver, writes on the event loop and reads on threads (see :class:`_SQLiteRunner` for why).

Concurrency. SQLite has one writer at a time: this process runs its writes one after another
and starts each with ``BEGIN IMMEDIATE``, so several processes on one file also stay correct
(they wait for each other). PostgreSQL runs writes concurrently; the queue hands out rollouts
with ``FOR UPDATE SKIP LOCKED`` and every status change first locks the rollout's row, so several
server processes on one database never hand a rollout out twice nor end an attempt twice. Row
locks are always taken in the order rollout, attempt, worker, so transactions do not deadlock.

Behaviour worth knowing:

- The queue is FIFO by insertion order. A requeued rollout keeps its original place, so a retry
  runs before rollouts enqueued after it and is never starved.
- ``sequence_id`` counts 0, 1, 2, ... per attempt in arrival order (within one ``add_spans`` call,
  in start-time order). Rollout-level spans (a rollout id, no attempt id) have their own counter
  per rollout and sort before the first attempt's spans; unattributed spans (no rollout id) share
  one store-wide counter.
- Cancelled and expired attempts clear the worker's ``current_attempt_id``; ``attempts_done``
  counts only attempts the worker itself finished.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import bindparam, event, func
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from agentbolt.errors import BadInput, Conflict, IllegalTransition, NotFound, StoreUnavailable
from agentbolt.lifecycle import check_attempt_move, check_rollout_move, rollout_after_attempt
from agentbolt.store.schema import (
    SCHEMA_VERSION,
    UNATTRIBUTED_SPANS,
    attempts,
    model_versions,
    rollouts,
    schema_info,
    sequences,
    spans,
    workers,
)
from agentbolt.store.schema import metadata as schema_metadata
from agentbolt.types import (
    AddSpansResult,
    Attempt,
    AttemptFinish,
    AttemptStatus,
    Claim,
    ErrorInfo,
    ModelVersion,
    ModelVersionCreate,
    Page,
    Rollout,
    RolloutConfig,
    RolloutCreate,
    RolloutMode,
    RolloutQuery,
    RolloutStatus,
    Span,
    SpanIn,
    SpanStatus,
    WaitResult,
    Worker,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

_R = RolloutStatus
_A = AttemptStatus

_SQLITE_DRIVER = "sqlite+aiosqlite"
_POSTGRES_DRIVER = "postgresql+asyncpg"
_URL_HELP = "use sqlite+aiosqlite:///PATH.db or postgresql+asyncpg://USER@HOST:PORT/DB"

_SQLITE_BUSY_TIMEOUT_MS = 30_000
_SQLITE_READERS = 4
_SQLITE_BUSY = 5  # the SQLITE_BUSY result code
# The writer thread checkpoints the WAL after this many writes on the event loop.
_SQLITE_CHECKPOINT_EVERY = 200
# Key of the advisory lock that serialises schema creation across PostgreSQL clients.
_PG_SCHEMA_LOCK = 0x61676E74626F6C74  # "agntbolt"
_INT64_MAX = 2**63 - 1
# wait_for_rollouts polls at first this often, backing off to the maximum.
_WAIT_POLL_MIN_S = 0.05
_WAIT_POLL_MAX_S = 0.2

_dumps = partial(json.dumps, separators=(",", ":"), ensure_ascii=False)


def _new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


def _to_json(value: Any, what: str) -> str:
    try:
        return _dumps(value)
    except (TypeError, ValueError) as e:
        raise BadInput(f"{what} is not JSON-serialisable: {e}") from None


# ---------------------------------------------------------------------------------------------
# Rows to types


def _rollout(row: Any, attempt_list: list[Attempt] | None = None) -> Rollout:
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


def _attempt(row: Any) -> Attempt:
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


def _span(row: Any) -> Span:
    return Span(
        rollout_id=row.rollout_id,
        attempt_id=row.attempt_id,
        trace_id=row.trace_id,
        span_id=row.span_id,
        parent_id=row.parent_id,
        name=row.name,
        kind=row.kind,
        start_time_ns=row.start_time_ns,
        end_time_ns=row.end_time_ns,
        attributes=json.loads(row.attributes),
        events=json.loads(row.events),
        links=json.loads(row.links),
        status=SpanStatus(code=row.status_code, message=row.status_message),
        resource=json.loads(row.resource),
        scope=row.scope,
        sequence_id=row.sequence_id,
    )


def _span_values(span: SpanIn, attempt_number: int, sequence_id: int) -> dict[str, Any]:
    what = f"span {span.span_id} (trace {span.trace_id})"
    for field in ("start_time_ns", "end_time_ns"):
        if getattr(span, field) > _INT64_MAX:
            raise BadInput(f"{what}: {field} is larger than a signed 64-bit integer")
    events = [{"name": e.name, "time_ns": e.time_ns, "attributes": e.attributes} for e in span.events]
    links = [{"trace_id": li.trace_id, "span_id": li.span_id, "attributes": li.attributes} for li in span.links]
    return {
        "rollout_id": span.rollout_id,
        "attempt_id": span.attempt_id,
        "attempt_number": attempt_number,
        "sequence_id": sequence_id,
        "trace_id": span.trace_id,
        "span_id": span.span_id,
        "parent_id": span.parent_id,
        "name": span.name,
        "kind": span.kind,
        "start_time_ns": span.start_time_ns,
        "end_time_ns": span.end_time_ns,
        "attributes": _to_json(span.attributes, f"{what}: attributes"),
        "events": _to_json(events, f"{what}: events"),
        "links": _to_json(links, f"{what}: links"),
        "status_code": span.status.code.value,
        "status_message": span.status.message,
        "resource": _to_json(span.resource, f"{what}: resource"),
        "scope": span.scope,
    }


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

_SELECT_ATTEMPTS_OF = (
    sa.select(attempts)
    .where(attempts.c.rollout_id.in_(bindparam("ids", expanding=True)))
    .order_by(attempts.c.rollout_id, attempts.c.number)
)

# add_spans: lock the span counters, find spans stored already, save the counters.
_LOCK_ROLLOUT_COUNTERS = (
    sa.select(rollouts.c.rollout_id, rollouts.c.next_span_seq)
    .where(rollouts.c.rollout_id.in_(bindparam("ids", expanding=True)))
    .order_by(rollouts.c.rollout_id)
    .with_for_update()
)
_LOCK_ATTEMPT_COUNTERS = (
    sa.select(attempts.c.attempt_id, attempts.c.rollout_id, attempts.c.number, attempts.c.next_span_seq)
    .where(attempts.c.attempt_id.in_(bindparam("ids", expanding=True)))
    .order_by(attempts.c.attempt_id)
    .with_for_update()
)
_LOCK_UNATTRIBUTED_COUNTER = (
    sa.select(sequences.c.next_value).where(sequences.c.name == UNATTRIBUTED_SPANS).with_for_update()
)
_STORED_SPANS = sa.select(spans.c.trace_id, spans.c.span_id).where(
    spans.c.trace_id.in_(bindparam("trace_ids", expanding=True)),
    spans.c.span_id.in_(bindparam("span_ids", expanding=True)),
)
_SET_ROLLOUT_COUNTER = (
    sa.update(rollouts).where(rollouts.c.rollout_id == bindparam("b_id")).values(next_span_seq=bindparam("b_next"))
)
_SET_ATTEMPT_COUNTER = (
    sa.update(attempts).where(attempts.c.attempt_id == bindparam("b_id")).values(next_span_seq=bindparam("b_next"))
)
_SET_UNATTRIBUTED_COUNTER = (
    sa.update(sequences).where(sequences.c.name == UNATTRIBUTED_SPANS).values(next_value=bindparam("b_next"))
)


class Store:
    """Async access to agentbolt's database. Create with ``Store(url)``, then ``await store.open()``."""

    def __init__(self, url: str) -> None:
        try:
            parsed = make_url(url)
        except sa_exc.ArgumentError:
            raise BadInput(f"store URL {url!r} is not a database URL; {_URL_HELP}") from None
        if parsed.drivername == _SQLITE_DRIVER:
            if not parsed.database or parsed.database == ":memory:" or parsed.query.get("mode") == "memory":
                raise BadInput(
                    f"store URL {url!r} names an in-memory SQLite database, which is neither durable nor "
                    "shared between connections; give a file path: sqlite+aiosqlite:///PATH.db"
                )
            self._backend = "sqlite"
        elif parsed.drivername == _POSTGRES_DRIVER:
            self._backend = "postgresql"
        else:
            hint = ""
            if parsed.drivername in ("sqlite", "sqlite+pysqlite"):
                hint = " (write sqlite+aiosqlite://...)"
            elif parsed.drivername.startswith("postgres"):
                hint = " (the store is async: write postgresql+asyncpg://...)"
            raise BadInput(f"store URL scheme {parsed.drivername!r} is not supported{hint}; {_URL_HELP}")
        self._url: URL = parsed
        self._sqlite: _SQLiteRunner | None = None
        self._pg_engine: AsyncEngine | None = None
        insert = sqlite.insert if self._backend == "sqlite" else postgresql.insert
        upsert = insert(workers)
        self._upsert_worker = upsert.on_conflict_do_update(
            index_elements=[workers.c.worker_id],
            set_={
                "last_seen_at": upsert.excluded.last_seen_at,
                "current_attempt_id": upsert.excluded.current_attempt_id,
            },
        )
        self._insert_spans = (
            insert(spans).on_conflict_do_nothing(index_elements=["trace_id", "span_id"]).returning(spans.c.id)
        )

    @property
    def backend(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self._backend

    @property
    def url(self) -> str:
        """The database URL, password hidden."""
        return self._url.render_as_string(hide_password=True)

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    # -- lifecycle ---------------------------------------------------------------------------
    async def open(self) -> None:
        """Connect, create the schema if absent, check its version. Raises StoreUnavailable."""
        if self._sqlite is not None or self._pg_engine is not None:
            return
        try:
            if self._backend == "sqlite":
                runner = _SQLiteRunner(self._url)
                try:
                    await runner.run(self._txn_prepare_schema, write=True)
                except BaseException:
                    await runner.close()
                    raise
                self._sqlite = runner
            else:
                engine = create_async_engine(self._url, pool_size=10, max_overflow=10)
                try:
                    async with engine.begin() as conn:
                        await conn.run_sync(self._txn_prepare_schema)
                except BaseException:
                    await engine.dispose()
                    raise
                self._pg_engine = engine
        except StoreUnavailable:
            raise
        except (sa_exc.DBAPIError, sa_exc.TimeoutError, OSError) as e:
            raise StoreUnavailable(f"cannot open the store at {self.url}: {_reason(e)}") from e
        log.debug("store open: %s (schema version %d)", self.url, SCHEMA_VERSION)

    async def close(self) -> None:
        """Close all connections. The store can be opened again."""
        if self._sqlite is not None:
            runner, self._sqlite = self._sqlite, None
            await runner.close()
        if self._pg_engine is not None:
            engine, self._pg_engine = self._pg_engine, None
            await engine.dispose()

    def _txn_prepare_schema(self, conn: Connection) -> None:
        if self._backend == "postgresql":
            # Two processes opening a fresh database must not both create the tables.
            conn.execute(sa.select(func.pg_advisory_xact_lock(_PG_SCHEMA_LOCK)))
        tables = set(sa.inspect(conn).get_table_names())
        ours = set(schema_metadata.tables)
        if schema_info.name in tables:
            version = conn.execute(sa.select(schema_info.c.version).where(schema_info.c.id == 1)).scalar()
            if version is None:
                raise StoreUnavailable(
                    f"the database at {self.url} has an empty schema_info table; it was not made by "
                    "agentbolt or is damaged. Use another database."
                )
            if version != SCHEMA_VERSION:
                advice = (
                    "Upgrade agentbolt to open it."
                    if version > SCHEMA_VERSION
                    else "This version is unknown; use another database."
                )
                raise StoreUnavailable(
                    f"the database at {self.url} has schema version {version}, but this agentbolt "
                    f"understands version {SCHEMA_VERSION} only. {advice}"
                )
        elif tables & ours:
            raise StoreUnavailable(
                f"the database at {self.url} has tables named like agentbolt's ({', '.join(sorted(tables & ours))}) "
                "but no schema_info table, so its schema version is unknown. Use another database."
            )
        schema_metadata.create_all(conn)  # only the missing tables
        if schema_info.name not in tables:
            conn.execute(sa.insert(schema_info).values(id=1, version=SCHEMA_VERSION, created_at=time.time()))
        counter = conn.execute(sa.select(sequences.c.name).where(sequences.c.name == UNATTRIBUTED_SPANS)).first()
        if counter is None:
            conn.execute(sa.insert(sequences).values(name=UNATTRIBUTED_SPANS, next_value=0))

    async def _run(self, txn: Callable[[Connection], T], write: bool = True) -> T:
        """Run ``txn`` in one transaction, committed when it returns; database errors become agentbolt errors."""
        try:
            if self._sqlite is not None:
                return await self._sqlite.run(txn, write)
            if self._pg_engine is not None:
                async with self._pg_engine.begin() as conn:
                    return await conn.run_sync(txn)
        except sa_exc.IntegrityError as e:
            raise Conflict(f"the change clashes with stored data: {_reason(e)}") from e
        except sa_exc.DataError as e:
            raise BadInput(f"the database refused a value: {_reason(e)}") from e
        except (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError, OSError) as e:
            raise StoreUnavailable(f"the store at {self.url} is unavailable: {_reason(e)}") from e
        except sa_exc.DBAPIError as e:
            if e.connection_invalidated:
                raise StoreUnavailable(f"lost the connection to the store at {self.url}: {_reason(e)}") from e
            raise
        raise StoreUnavailable(f"the store at {self.url} is not open; call `await store.open()` first")

    # -- queue -------------------------------------------------------------------------------
    async def enqueue(self, rollouts_in: list[RolloutCreate]) -> list[Rollout]:
        """Add rollouts (status queuing) in one transaction. Raises Conflict on a duplicate id."""
        if not rollouts_in:
            return []
        now = time.time()
        rows: list[dict[str, Any]] = []
        for item in rollouts_in:
            rollout_id = item.rollout_id or _new_id("ro")
            what = f"rollout {rollout_id}"
            rows.append(
                {
                    "rollout_id": rollout_id,
                    "input": _to_json(item.input, f"the input of {what}"),
                    "mode": item.mode,
                    "group_id": item.group_id,
                    "model_version": item.model_version,
                    "config": item.config.model_dump_json(),
                    "metadata": _to_json(item.metadata, f"the metadata of {what}"),
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

        def txn(conn: Connection) -> None:
            if chosen:
                taken = conn.execute(sa.select(rollouts.c.rollout_id).where(rollouts.c.rollout_id.in_(chosen)))
                taken_ids = sorted(taken.scalars())
                if taken_ids:
                    raise Conflict(f"rollout id {', '.join(taken_ids)} exists already; choose another id")
            conn.execute(sa.insert(rollouts), rows)

        await self._run(txn)
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

    async def dequeue(self, worker_id: str, modes: list[RolloutMode] | None = None) -> Claim | None:
        """Give the oldest queuing rollout to ``worker_id`` with a new attempt, or None.

        Exclusive: no rollout is ever handed to two callers, also across processes.
        ``modes`` limits the choice to rollouts of those modes (None: any mode).
        """
        if not worker_id:
            raise BadInput("worker_id must not be empty")
        if modes is not None and not modes:
            return None
        return await self._run(partial(self._txn_dequeue, worker_id, modes))

    def _txn_dequeue(self, worker_id: str, modes: list[RolloutMode] | None, conn: Connection) -> Claim | None:
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
            attempt_id=_new_id("at"),
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
            self._upsert_worker,
            {
                "worker_id": worker_id,
                "first_seen_at": now,
                "last_seen_at": now,
                "current_attempt_id": attempt.attempt_id,
                "attempts_done": 0,
            },
        )
        return Claim(rollout=_rollout(row), attempt=attempt)

    async def heartbeat(self, rollout_id: str, attempt_id: str, worker_id: str | None = None) -> Attempt:
        """Record that the attempt's worker is alive.

        Raises NotFound (unknown rollout or attempt, or the attempt is not the rollout's),
        IllegalTransition if the attempt has ended, Conflict if ``worker_id`` is not its worker.
        """

        def txn(conn: Connection) -> Attempt:
            now = time.time()
            row = conn.execute(
                _HEARTBEAT, {"b_attempt_id": attempt_id, "b_rollout_id": rollout_id, "b_now": now}
            ).first()
            if row is None:
                status = _attempt_status(conn, rollout_id, attempt_id)
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
            return _attempt(row)

        return await self._run(txn)

    async def finish_attempt(self, rollout_id: str, attempt_id: str, finish: AttemptFinish) -> Rollout:
        """End a running attempt; succeed, requeue or fail the rollout per its config.

        Sets the rollout's reward when ``finish.reward`` is given. Raises NotFound, and
        IllegalTransition if the attempt is no longer running (e.g. the watchdog timed it out).
        """
        new_status = AttemptStatus(finish.status)
        check_attempt_move(attempt_id, _A.RUNNING, new_status)
        error = finish.error.model_dump_json() if finish.error is not None else None

        def txn(conn: Connection) -> Rollout:
            now = time.time()
            locked = conn.execute(_LOCK_ROLLOUT, {"rollout_id": rollout_id}).first()
            if locked is None:
                raise NotFound(f"rollout {rollout_id} does not exist")
            ended = conn.execute(
                _END_ATTEMPT_RETURNING,
                {
                    "b_attempt_id": attempt_id,
                    "b_rollout_id": rollout_id,
                    "b_status": new_status.value,
                    "b_ended_at": now,
                    "b_error": error,
                },
            ).first()
            if ended is None:
                # Not running any more (or not this rollout's): say which.
                check_attempt_move(attempt_id, _attempt_status(conn, rollout_id, attempt_id), new_status)
                raise IllegalTransition(f"attempt {attempt_id} of rollout {rollout_id} is not running")
            config = RolloutConfig.model_validate_json(locked.config)
            next_status = rollout_after_attempt(config, new_status, locked.num_attempts)
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
                conn.execute(
                    _WORKER_FINISHED, {"b_worker_id": ended.worker_id, "b_attempt_id": attempt_id, "b_now": now}
                )
            return _rollout(row)

        return await self._run(txn)

    async def cancel(self, rollout_id: str) -> Rollout:
        """Cancel a queuing or running rollout (its running attempt becomes cancelled).

        Raises NotFound, and IllegalTransition if the rollout has finished already.
        """

        def txn(conn: Connection) -> Rollout:
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
            return _rollout(row)

        return await self._run(txn)

    async def expire_attempts(self, now: float | None = None) -> list[Attempt]:
        """The watchdog's step: end running attempts past their timeout or heartbeat timeout.

        An attempt running longer than its rollout's ``timeout_s`` becomes timeout; else one
        without a heartbeat for ``heartbeat_timeout_s`` becomes unresponsive. Each rollout is
        then requeued or failed per its config. ``now`` defaults to the current time.
        Returns the attempts it ended (status timeout or unresponsive).
        """
        return await self._run(partial(_txn_expire_attempts, time.time() if now is None else now))

    # -- queries -----------------------------------------------------------------------------
    async def get_rollout(self, rollout_id: str, with_attempts: bool = True) -> Rollout:
        """One rollout, with its attempts (oldest first) unless ``with_attempts`` is False. Raises NotFound."""

        def txn(conn: Connection) -> Rollout:
            row = conn.execute(sa.select(rollouts).where(rollouts.c.rollout_id == rollout_id)).first()
            if row is None:
                raise NotFound(f"rollout {rollout_id} does not exist")
            return _rollout(row, _attempts_of(conn, [rollout_id])[rollout_id] if with_attempts else None)

        return await self._run(txn, write=False)

    async def get_attempt(self, rollout_id: str, attempt_id: str) -> Attempt:
        """One attempt of a rollout. Raises NotFound."""

        def txn(conn: Connection) -> Attempt:
            row = conn.execute(
                sa.select(attempts).where(attempts.c.attempt_id == attempt_id, attempts.c.rollout_id == rollout_id)
            ).first()
            if row is None:
                raise _attempt_not_found(conn, rollout_id, attempt_id)
            return _attempt(row)

        return await self._run(txn, write=False)

    async def query_rollouts(self, query: RolloutQuery) -> Page[Rollout]:
        """Rollouts matching all given filters, oldest first: one page of them and the total count."""
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

        def txn(conn: Connection) -> Page[Rollout]:
            rows = conn.execute(page).all()
            total = conn.execute(count).scalar_one()
            if not query.with_attempts:
                return Page[Rollout](
                    items=[_rollout(r) for r in rows], total=total, limit=query.limit, offset=query.offset
                )
            by_rollout = _attempts_of(conn, [r.rollout_id for r in rows])
            items = [_rollout(r, by_rollout[r.rollout_id]) for r in rows]
            return Page[Rollout](items=items, total=total, limit=query.limit, offset=query.offset)

        return await self._run(txn, write=False)

    async def wait_for_rollouts(self, rollout_ids: list[str], timeout_s: float) -> WaitResult:
        """Wait until all rollouts are finished or ``timeout_s`` passes.

        Returns the finished rollouts and the ids still pending, both in the order given.
        Raises NotFound (before waiting) if an id does not exist.
        """
        ids = list(dict.fromkeys(rollout_ids))
        if not ids:
            return WaitResult(finished=[], pending=[])
        finished_values = [s.value for s in RolloutStatus if s.finished]

        def unfinished(conn: Connection, among: list[str]) -> list[str]:
            rows = conn.execute(
                sa.select(rollouts.c.rollout_id, rollouts.c.status).where(rollouts.c.rollout_id.in_(among))
            ).all()
            if len(rows) < len(among):
                missing = set(among) - {r.rollout_id for r in rows}
                raise NotFound(f"rollout {', '.join(i for i in among if i in missing)} does not exist")
            done = {r.rollout_id for r in rows if r.status in finished_values}
            return [i for i in among if i not in done]

        deadline = time.monotonic() + max(timeout_s, 0.0)
        delay = _WAIT_POLL_MIN_S
        pending = ids
        while True:
            pending = await self._run(partial(unfinished, among=pending), write=False)
            remaining = deadline - time.monotonic()
            if not pending or remaining <= 0:
                break
            await asyncio.sleep(min(delay, remaining))
            delay = min(delay * 1.5, _WAIT_POLL_MAX_S)

        def result(conn: Connection) -> WaitResult:
            rows = conn.execute(sa.select(rollouts).where(rollouts.c.rollout_id.in_(ids))).all()
            by_id = {r.rollout_id: r for r in rows}
            return WaitResult(
                finished=[_rollout(by_id[i]) for i in ids if by_id[i].status in finished_values],
                pending=[i for i in ids if by_id[i].status not in finished_values],
            )

        return await self._run(result, write=False)

    # -- spans -------------------------------------------------------------------------------
    async def add_spans(self, spans_in: list[SpanIn]) -> AddSpansResult:
        """Store spans in one transaction, numbering them per attempt in arrival order.

        Idempotent: a span whose (trace_id, span_id) is stored already, or repeats within the
        batch, is skipped and counted in ``duplicates``. Spans of ended attempts are accepted.
        Raises NotFound if a span names a rollout or attempt that does not exist, or an attempt
        of another rollout (nothing is stored then); BadInput for values that cannot be stored.
        """
        batch: list[SpanIn] = []
        seen: set[tuple[str, str]] = set()
        for span in spans_in:
            key = (span.trace_id, span.span_id)
            if key not in seen:
                seen.add(key)
                batch.append(span)
        if not batch:
            return AddSpansResult(inserted=0, duplicates=len(spans_in))
        inserted = await self._run(partial(self._txn_add_spans, batch))
        return AddSpansResult(inserted=inserted, duplicates=len(spans_in) - inserted)

    async def add_reward(self, span: SpanIn, final_value: float | None) -> AddSpansResult:
        """Store a reward span; with ``final_value``, also make it the rollout's reward. One transaction."""
        if span.rollout_id is None:
            raise BadInput("a reward span needs a rollout id")
        rollout_id = span.rollout_id

        def txn(conn: Connection) -> int:
            inserted = self._txn_add_spans([span], conn)
            if final_value is not None:
                conn.execute(sa.update(rollouts).where(rollouts.c.rollout_id == rollout_id).values(reward=final_value))
            return inserted

        inserted = await self._run(txn)
        return AddSpansResult(inserted=inserted, duplicates=1 - inserted)

    def _txn_add_spans(self, batch: list[SpanIn], conn: Connection) -> int:
        rollout_level = sorted({s.rollout_id for s in batch if s.rollout_id is not None and s.attempt_id is None})
        attempt_ids = sorted({s.attempt_id for s in batch if s.attempt_id is not None})
        # Lock the counters first (rollouts, then attempts, then the store-wide one): a concurrent
        # add_spans for the same attempt waits here, then sees our spans in the duplicate check.
        next_seq: dict[tuple[str | None, str | None], int] = {}
        numbers: dict[str, int] = {}
        if rollout_level:
            rows = conn.execute(_LOCK_ROLLOUT_COUNTERS, {"ids": rollout_level})
            next_seq.update({(r.rollout_id, None): r.next_span_seq for r in rows})
            for span in batch:
                if span.rollout_id is not None and span.attempt_id is None and (span.rollout_id, None) not in next_seq:
                    raise NotFound(
                        f"span {span.span_id} names rollout {span.rollout_id}, which does not exist; "
                        "no span of this request was stored"
                    )
        if attempt_ids:
            owner: dict[str, str] = {}
            for r in conn.execute(_LOCK_ATTEMPT_COUNTERS, {"ids": attempt_ids}):
                owner[r.attempt_id] = r.rollout_id
                numbers[r.attempt_id] = r.number
                next_seq[(r.rollout_id, r.attempt_id)] = r.next_span_seq
            for span in batch:
                if span.attempt_id is not None and owner.get(span.attempt_id) != span.rollout_id:
                    raise _span_target_not_found(conn, span, owner.get(span.attempt_id))
        if any(s.rollout_id is None for s in batch):
            next_seq[(None, None)] = conn.execute(_LOCK_UNATTRIBUTED_COUNTER).scalar_one()

        existing = conn.execute(
            _STORED_SPANS,
            {"trace_ids": sorted({s.trace_id for s in batch}), "span_ids": sorted({s.span_id for s in batch})},
        )
        stored = {(r.trace_id, r.span_id) for r in existing}
        fresh = sorted((s for s in batch if (s.trace_id, s.span_id) not in stored), key=lambda s: s.start_time_ns)
        if not fresh:
            return 0
        values: list[dict[str, Any]] = []
        for span in fresh:
            group = (span.rollout_id, span.attempt_id)
            seq = next_seq[group]
            next_seq[group] = seq + 1
            number = numbers[span.attempt_id] if span.attempt_id is not None else 0
            values.append(_span_values(span, number, seq))
        # Insert in key order, so two requests racing on the same spans never deadlock.
        values.sort(key=lambda v: (v["trace_id"], v["span_id"]))
        inserted = len(conn.execute(self._insert_spans, values).all())
        _save_span_counters(conn, {(s.rollout_id, s.attempt_id) for s in fresh}, next_seq)
        return inserted

    async def query_spans(
        self,
        rollout_id: str | None,
        attempt_id: str | None = None,
        limit: int = 1000,
        offset: int = 0,
    ) -> Page[Span]:
        """Spans of a rollout (optionally one attempt), ordered by attempt then sequence id.

        ``rollout_id=None`` selects unattributed spans. Rollout-level spans (no attempt) come
        first. Raises NotFound for an unknown rollout or attempt.
        """
        if limit < 1 or offset < 0:
            raise BadInput(f"limit must be at least 1 and offset at least 0 (got limit={limit}, offset={offset})")
        if rollout_id is None and attempt_id is not None:
            raise BadInput(f"attempt {attempt_id} was given without its rollout id")

        def txn(conn: Connection) -> Page[Span]:
            if rollout_id is None:
                condition: sa.ColumnElement[bool] = spans.c.rollout_id.is_(None)
            elif attempt_id is None:
                if conn.execute(sa.select(rollouts.c.seq).where(rollouts.c.rollout_id == rollout_id)).first() is None:
                    raise NotFound(f"rollout {rollout_id} does not exist")
                condition = spans.c.rollout_id == rollout_id
            else:
                number = conn.execute(
                    sa.select(attempts.c.number).where(
                        attempts.c.attempt_id == attempt_id, attempts.c.rollout_id == rollout_id
                    )
                ).scalar()
                if number is None:
                    raise _attempt_not_found(conn, rollout_id, attempt_id)
                condition = sa.and_(spans.c.rollout_id == rollout_id, spans.c.attempt_number == number)
            rows = conn.execute(
                sa.select(spans)
                .where(condition)
                .order_by(spans.c.attempt_number, spans.c.sequence_id, spans.c.id)
                .limit(limit)
                .offset(offset)
            ).all()
            total = conn.execute(sa.select(func.count()).select_from(spans).where(condition)).scalar_one()
            return Page[Span](items=[_span(r) for r in rows], total=total, limit=limit, offset=offset)

        return await self._run(txn, write=False)

    # -- workers and model versions ----------------------------------------------------------
    async def list_workers(self) -> list[Worker]:
        """Every worker that ever dequeued, in order of first appearance."""

        def txn(conn: Connection) -> list[Worker]:
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

        return await self._run(txn, write=False)

    async def add_model_version(self, record: ModelVersionCreate) -> ModelVersion:
        """Record a model version. Raises Conflict if that version number is recorded already."""
        created = ModelVersion(**record.model_dump(), created_at=time.time())
        values = {
            "version": created.version,
            "model": created.model,
            "checkpoint": created.checkpoint,
            "metadata": _to_json(created.metadata, f"the metadata of model version {created.version}"),
            "created_at": created.created_at,
        }

        def txn(conn: Connection) -> None:
            taken = conn.execute(sa.select(model_versions.c.version).where(model_versions.c.version == created.version))
            if taken.first() is not None:
                raise Conflict(f"model version {created.version} is recorded already; versions only go up")
            conn.execute(sa.insert(model_versions).values(**values))

        await self._run(txn)
        return created

    async def latest_model_version(self) -> ModelVersion | None:
        """The record with the highest version number, or None if there is none."""

        def txn(conn: Connection) -> ModelVersion | None:
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

        return await self._run(txn, write=False)


# ---------------------------------------------------------------------------------------------
# Transaction bodies and helpers that need no Store state


def _txn_expire_attempts(now: float, conn: Connection) -> list[Attempt]:
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
        next_status = rollout_after_attempt(config, status, row.num_attempts)
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
        ended.append(_attempt(row).model_copy(update={"status": status, "ended_at": now}))
    conn.execute(_END_ATTEMPT, attempt_updates)
    conn.execute(_MOVE_ROLLOUT, rollout_updates)
    if worker_updates:
        worker_updates.sort(key=lambda w: (w["b_worker_id"], w["b_attempt_id"]))
        conn.execute(_WORKER_RELEASED, worker_updates)
    return ended


def _save_span_counters(
    conn: Connection,
    used: set[tuple[str | None, str | None]],
    next_seq: dict[tuple[str | None, str | None], int],
) -> None:
    rollout_counters = [
        {"b_id": r, "b_next": next_seq[(r, None)]} for r in sorted(r for r, a in used if r is not None and a is None)
    ]
    attempt_counters = [
        {"b_id": a, "b_next": next_seq[(r, a)]} for r, a in sorted((r, a) for r, a in used if a is not None)
    ]
    if rollout_counters:
        conn.execute(_SET_ROLLOUT_COUNTER, rollout_counters)
    if attempt_counters:
        conn.execute(_SET_ATTEMPT_COUNTER, attempt_counters)
    if (None, None) in used:
        conn.execute(_SET_UNATTRIBUTED_COUNTER, {"b_next": next_seq[(None, None)]})


def _span_target_not_found(conn: Connection, span: SpanIn, owner: str | None) -> NotFound:
    where = f"span {span.span_id} names attempt {span.attempt_id} of rollout {span.rollout_id}"
    tail = "; no span of this request was stored"
    if owner is not None:
        return NotFound(f"{where}, but that attempt belongs to rollout {owner}{tail}")
    known = conn.execute(sa.select(rollouts.c.seq).where(rollouts.c.rollout_id == span.rollout_id)).first()
    if known is None:
        return NotFound(f"{where}, but rollout {span.rollout_id} does not exist{tail}")
    return NotFound(f"{where}, but attempt {span.attempt_id} does not exist{tail}")


def _attempts_of(conn: Connection, rollout_ids: Sequence[str]) -> dict[str, list[Attempt]]:
    by_rollout: dict[str, list[Attempt]] = {rid: [] for rid in rollout_ids}
    if rollout_ids:
        for row in conn.execute(_SELECT_ATTEMPTS_OF, {"ids": list(rollout_ids)}):
            by_rollout[row.rollout_id].append(_attempt(row))
    return by_rollout


def _attempt_status(conn: Connection, rollout_id: str, attempt_id: str) -> AttemptStatus:
    """The attempt's status; raises NotFound naming what is missing or mismatched."""
    status = conn.execute(
        sa.select(attempts.c.status).where(attempts.c.attempt_id == attempt_id, attempts.c.rollout_id == rollout_id)
    ).scalar()
    if status is None:
        raise _attempt_not_found(conn, rollout_id, attempt_id)
    return AttemptStatus(status)


def _attempt_not_found(conn: Connection, rollout_id: str, attempt_id: str) -> NotFound:
    """The precise error for an attempt id that is not one of the rollout's attempts."""
    if conn.execute(sa.select(rollouts.c.seq).where(rollouts.c.rollout_id == rollout_id)).first() is None:
        return NotFound(f"rollout {rollout_id} does not exist")
    owner = conn.execute(sa.select(attempts.c.rollout_id).where(attempts.c.attempt_id == attempt_id)).scalar()
    if owner is None:
        return NotFound(f"attempt {attempt_id} of rollout {rollout_id} does not exist")
    return NotFound(f"attempt {attempt_id} belongs to rollout {owner}, not to rollout {rollout_id}")


def _reason(error: BaseException) -> str:
    """The driver's message without SQLAlchemy's statement dump."""
    orig = getattr(error, "orig", None)
    text = str(orig if orig is not None else error).strip()
    return text.splitlines()[0] if text else type(error).__name__


# ---------------------------------------------------------------------------------------------
# SQLite


class _SQLiteRunner:
    """Runs each transaction on a SQLite file in one piece, with the stdlib (synchronous) driver.

    Why not an async driver: aiosqlite hops to its thread several times per statement, and each
    hop (plus the GIL hand-over) cost more than the SQL itself; the store managed ~90 rollouts/s.

    Writes run on the event loop itself: a write transaction is a few hundred microseconds of
    work that holds the GIL anyway, and handing it to a thread made the server ~40% slower.
    They run one at a time (``_write_lock``) and start with ``BEGIN IMMEDIATE``, which takes the
    file's write lock up front. That connection does not wait for locks (``busy_timeout=0``):
    if another process holds the write lock, the transaction is redone on the writer thread,
    which waits up to ``busy_timeout`` without blocking the event loop. Checkpoints (copying the
    WAL into the database file, with fsync) also run on that thread, every so many writes,
    between two writes.

    Reads run on a few threads; in WAL mode they neither block the writer nor each other.
    """

    def __init__(self, url: URL) -> None:
        path = Path(url.database or "")
        path.parent.mkdir(parents=True, exist_ok=True)
        file_url = url.set(drivername="sqlite+pysqlite")
        # Readers and writes that must wait for another process.
        self._engine = sa.create_engine(file_url, pool_size=_SQLITE_READERS + 1)
        event.listen(self._engine, "connect", _sqlite_on_connect)
        # Writes on the event loop.
        self._loop_engine = sa.create_engine(file_url, pool_size=1)
        event.listen(self._loop_engine, "connect", _sqlite_on_connect)
        event.listen(self._loop_engine, "connect", _sqlite_never_wait)
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="agentbolt-sqlite-writer")
        self._readers = ThreadPoolExecutor(max_workers=_SQLITE_READERS, thread_name_prefix="agentbolt-sqlite-reader")
        self._write_lock = asyncio.Lock()
        self._writes_since_checkpoint = 0

    async def run(self, txn: Callable[[Connection], T], write: bool) -> T:
        loop = asyncio.get_running_loop()
        if not write:
            return await loop.run_in_executor(self._readers, _sqlite_transaction, self._engine, "BEGIN", txn)
        async with self._write_lock:
            try:
                result = _sqlite_transaction(self._loop_engine, "BEGIN IMMEDIATE", txn)
            except _WriteLockBusy:
                result = await loop.run_in_executor(
                    self._writer, _sqlite_transaction, self._engine, "BEGIN IMMEDIATE", txn
                )
            self._writes_since_checkpoint += 1
            if self._writes_since_checkpoint >= _SQLITE_CHECKPOINT_EVERY:
                # Still holding the write lock: with no write in between, the checkpoint copies
                # the whole WAL, so the next write starts it over and the file stays small.
                self._writes_since_checkpoint = 0
                await loop.run_in_executor(self._writer, self._run_checkpoint)
            return result

    def _run_checkpoint(self) -> None:
        try:
            with self._engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")
        except Exception:  # a missed checkpoint is retried later; the WAL only grows meanwhile
            log.warning("SQLite WAL checkpoint failed", exc_info=True)

    async def close(self) -> None:
        def shut() -> None:
            self._writer.shutdown(wait=True)
            self._readers.shutdown(wait=True)
            self._loop_engine.dispose()
            self._engine.dispose()

        await asyncio.get_running_loop().run_in_executor(None, shut)


class _WriteLockBusy(Exception):
    """BEGIN IMMEDIATE found the write lock held (by another process); nothing was done."""


def _sqlite_transaction(engine: sa.Engine, begin: str, txn: Callable[[Connection], T]) -> T:
    with engine.connect() as conn:
        # The driver's own transaction handling is off (see _sqlite_on_connect): we say BEGIN.
        try:
            conn.exec_driver_sql(begin)
        except sa_exc.OperationalError as e:
            if _is_sqlite_busy(e.orig):
                raise _WriteLockBusy() from e
            raise
        result = txn(conn)
        conn.commit()  # on an exception, closing the connection rolls back instead
        return result


def _is_sqlite_busy(error: BaseException | None) -> bool:
    code = getattr(error, "sqlite_errorcode", None)  # Python 3.11+
    if code is not None:
        return bool(code & 0xFF == _SQLITE_BUSY)
    return "database is locked" in str(error)


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # Autocommit mode for the driver: it would otherwise issue a deferred BEGIN of its own.
    dbapi_connection.isolation_level = None
    dbapi_connection.execute(f"PRAGMA busy_timeout={_SQLITE_BUSY_TIMEOUT_MS}")
    dbapi_connection.execute("PRAGMA journal_mode=WAL")
    # With WAL, synchronous=NORMAL is durable across process crashes (a committed transaction
    # is in the WAL file, written before COMMIT returns); only an OS crash or power loss may
    # lose the last transactions. The database is never corrupted either way.
    dbapi_connection.execute("PRAGMA synchronous=NORMAL")
    dbapi_connection.execute("PRAGMA foreign_keys=ON")


def _sqlite_never_wait(dbapi_connection: Any, _record: Any) -> None:
    # The event loop's connection: fail at once on a held lock (the writer thread waits instead),
    # and leave checkpoints, which fsync, to the writer thread.
    dbapi_connection.execute("PRAGMA busy_timeout=0")
    dbapi_connection.execute("PRAGMA wal_autocheckpoint=0")
