"""The durable store: rollout queue, attempts, spans, workers and model versions.

One SQLAlchemy 2 Core implementation; the backend is chosen by URL: ``sqlite:///path.db``
(embedded default, WAL mode; ``sqlite+aiosqlite:///path.db`` means the same) or
``postgresql+asyncpg://...``.

Every operation is one transaction, written once as a synchronous function of a SQLAlchemy
``Connection``: the transaction bodies in :mod:`~agentbolt.store.queue`, :mod:`~agentbolt.store.spans`
and :mod:`~agentbolt.store.records`. :class:`Store` checks the arguments and runs one body per call.
PostgreSQL runs it through asyncpg with ``AsyncConnection.run_sync``. SQLite runs it in one piece on
the stdlib driver, writes on the event loop and reads on threads (see
:class:`~agentbolt.store.sqlite.SQLiteRunner` for why).

Concurrency. SQLite has one writer at a time: this process runs its writes one after another
and starts each with ``BEGIN IMMEDIATE``, so several processes on one file also stay correct
(they wait for each other). PostgreSQL runs writes concurrently; the queue hands out rollouts
with ``FOR UPDATE SKIP LOCKED`` and every status change first locks the rollout's row, so several
server processes on one database never hand a rollout out twice nor end an attempt twice. Row
locks are always taken in the order rollout, attempt, worker, so transactions do not deadlock.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from functools import partial
from typing import Concatenate, ParamSpec, TypeVar

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from agentbolt.errors import AgentboltError, BadInput, Conflict, StoreUnavailable
from agentbolt.lifecycle import check_attempt_move
from agentbolt.store import queue, records, spans
from agentbolt.store.schema import SCHEMA_VERSION, prepare_schema
from agentbolt.store.sqlite import SQLiteRunner
from agentbolt.types import (
    AddSpansResult,
    Attempt,
    AttemptFinish,
    AttemptStatus,
    Claim,
    ModelVersion,
    ModelVersionCreate,
    Page,
    Rollout,
    RolloutCreate,
    RolloutMode,
    RolloutQuery,
    RolloutWithSpans,
    Span,
    SpanIn,
    WaitResult,
    Worker,
)
from agentbolt.types.queue import AttemptFinishItem, AttemptHeartbeat, AttemptRelease

log = logging.getLogger(__name__)

T = TypeVar("T")
P = ParamSpec("P")

# ``sqlite:///`` runs on the stdlib driver; ``sqlite+aiosqlite:///`` (the older spelling) means the same.
_SQLITE_DRIVERS = ("sqlite", "sqlite+aiosqlite")
_POSTGRES_DRIVER = "postgresql+asyncpg"
_URL_HELP = "use sqlite:///PATH.db or postgresql+asyncpg://USER@HOST:PORT/DB"

# wait_for_rollouts polls at first this often, backing off to the maximum.
_WAIT_POLL_MIN_S = 0.05
_WAIT_POLL_MAX_S = 0.2


class Store:
    """Async access to agentbolt's database. Create with ``Store(url)``, then ``await store.open()``."""

    def __init__(self, url: str) -> None:
        try:
            parsed = make_url(url)
        except sa_exc.ArgumentError:
            raise BadInput(f"store URL {url!r} is not a database URL; {_URL_HELP}") from None
        if parsed.drivername in _SQLITE_DRIVERS:
            if not parsed.database or parsed.database == ":memory:" or parsed.query.get("mode") == "memory":
                raise BadInput(
                    f"store URL {url!r} names an in-memory SQLite database, which is neither durable nor "
                    "shared between connections; give a file path: sqlite:///PATH.db"
                )
            self._backend = "sqlite"
        elif parsed.drivername == _POSTGRES_DRIVER:
            self._backend = "postgresql"
        else:
            hint = ""
            if parsed.drivername.startswith("sqlite"):
                hint = " (write sqlite:///PATH.db)"
            elif parsed.drivername.startswith("postgres"):
                hint = " (the store is async: write postgresql+asyncpg://...)"
            raise BadInput(f"store URL scheme {parsed.drivername!r} is not supported{hint}; {_URL_HELP}")
        self._url: URL = parsed
        self._sqlite: SQLiteRunner | None = None
        self._pg_engine: AsyncEngine | None = None

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
        prepare = partial(prepare_schema, url=self.url)
        try:
            if self._backend == "sqlite":
                runner = SQLiteRunner(self._url)
                try:
                    await runner.run(prepare, write=True)
                except BaseException:
                    await runner.close()
                    raise
                self._sqlite = runner
            else:
                engine = create_async_engine(self._url, pool_size=10, max_overflow=10)
                try:
                    async with engine.begin() as conn:
                        await conn.run_sync(prepare)
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

    async def _run(self, txn: Callable[[Connection], T], write: bool) -> T:
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
        except OverflowError as e:  # SQLite's driver, before the database sees the value; the types bound it first
            raise BadInput(f"a number is too large for the store (a signed 64-bit integer at most): {e}") from e
        except (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError, OSError) as e:
            raise StoreUnavailable(f"the store at {self.url} is unavailable: {_reason(e)}") from e
        except sa_exc.DBAPIError as e:
            if e.connection_invalidated:
                raise StoreUnavailable(f"lost the connection to the store at {self.url}: {_reason(e)}") from e
            if _is_data_exception(e):  # asyncpg refuses an out-of-range argument as a generic driver error
                raise BadInput(f"the database refused a value: {_reason(e)}") from e
            raise
        raise StoreUnavailable(f"the store at {self.url} is not open; call `await store.open()` first")

    async def _write(self, body: Callable[Concatenate[Connection, P], T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run the transaction body ``body(conn, *args, **kwargs)`` as a write."""
        return await self._run(lambda conn: body(conn, *args, **kwargs), write=True)

    async def _read(self, body: Callable[Concatenate[Connection, P], T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run the transaction body ``body(conn, *args, **kwargs)`` as a read (on SQLite: beside the writes)."""
        return await self._run(lambda conn: body(conn, *args, **kwargs), write=False)

    # -- queue -------------------------------------------------------------------------------
    async def enqueue(self, rollouts_in: list[RolloutCreate]) -> list[Rollout]:
        """Add rollouts (status queuing) in one transaction. Raises Conflict on a duplicate id."""
        if not rollouts_in:
            return []
        return await self._write(queue.enqueue, rollouts_in)

    async def dequeue(self, worker_id: str, modes: list[RolloutMode] | None = None) -> Claim | None:
        """Give the oldest queuing rollout to ``worker_id`` with a new attempt, or None.

        Exclusive: no rollout is ever handed to two callers, also across processes.
        ``modes`` limits the choice to rollouts of those modes (None: any mode).
        """
        claims = await self.dequeue_many([worker_id], modes)
        return claims[0] if claims else None

    async def dequeue_many(self, worker_ids: list[str], modes: list[RolloutMode] | None = None) -> list[Claim]:
        """:meth:`dequeue` for several workers (a worker's runners) in one transaction.

        Hands out the oldest queuing rollouts, at most one to each of ``worker_ids`` (the oldest to the first);
        fewer when fewer are queued. Raises BadInput for an empty or repeated worker id.
        """
        if any(not w for w in worker_ids):
            raise BadInput("worker_id must not be empty")
        if len(set(worker_ids)) < len(worker_ids):
            raise BadInput("a worker id appears more than once; each gets at most one rollout")
        if not worker_ids or (modes is not None and not modes):
            return []
        return await self._write(queue.dequeue, worker_ids, modes)

    async def heartbeat(self, rollout_id: str, attempt_id: str, worker_id: str | None = None) -> Attempt:
        """Record that the attempt's worker is alive.

        Raises NotFound (unknown rollout or attempt, or the attempt is not the rollout's),
        IllegalTransition if the attempt has ended, Conflict if ``worker_id`` is not its worker.
        """
        beat = AttemptHeartbeat.model_construct(rollout_id=rollout_id, attempt_id=attempt_id, worker_id=worker_id)
        [outcome] = await self.heartbeats([beat])
        if isinstance(outcome, AgentboltError):
            raise outcome
        return outcome

    async def heartbeats(self, beats: list[AttemptHeartbeat]) -> list[Attempt | AgentboltError]:
        """:meth:`heartbeat` for several attempts in one transaction: each one's attempt, or the error
        :meth:`heartbeat` would have raised for it, in order."""
        if not beats:
            return []
        return await self._write(queue.heartbeat, beats)

    async def finish_attempt(self, rollout_id: str, attempt_id: str, finish: AttemptFinish) -> Rollout:
        """End a running attempt; succeed, requeue or fail the rollout per its config.

        Sets the rollout's reward when ``finish.reward`` is given. Idempotent: repeating the finish that
        ended the attempt (same status and error) answers the rollout again. Raises NotFound, and
        IllegalTransition if the attempt ended otherwise (e.g. the watchdog timed it out).
        """
        item = AttemptFinishItem.model_construct(rollout_id=rollout_id, attempt_id=attempt_id, **dict(finish))
        [outcome] = await self.finish_attempts([item])
        if isinstance(outcome, AgentboltError):
            raise outcome
        return outcome

    async def finish_attempts(self, finishes: list[AttemptFinishItem]) -> list[Rollout | AgentboltError]:
        """:meth:`finish_attempt` for several attempts in one transaction: each one's rollout, or the error
        :meth:`finish_attempt` would have raised for it, in order (a refused finish changes nothing)."""
        if not finishes:
            return []
        for finish in finishes:
            check_attempt_move(finish.attempt_id, AttemptStatus.RUNNING, AttemptStatus(finish.status))
        return await self._write(queue.finish_attempts, finishes)

    async def release_attempt(self, rollout_id: str, attempt_id: str, release: AttemptRelease) -> Rollout:
        """Give a running attempt back unfinished (its worker is shutting down): requeue the rollout at once.

        The attempt ends as failed with ``error.type`` ``RELEASED_ERROR_TYPE``; the rollout becomes queuing
        whatever its ``retry_on``, and the released attempt is not counted against ``max_attempts``. Repeating
        a release answers the rollout again. Raises NotFound, IllegalTransition if the attempt had already
        ended otherwise, Conflict if ``release.worker_id`` is not its worker.
        """
        return await self._write(queue.release_attempt, rollout_id, attempt_id, release)

    async def cancel(self, rollout_id: str) -> Rollout:
        """Cancel a queuing or running rollout (its running attempt becomes cancelled).

        Raises NotFound, and IllegalTransition if the rollout has finished already.
        """
        return await self._write(queue.cancel, rollout_id)

    async def expire_attempts(self, now: float | None = None) -> list[Attempt]:
        """The watchdog's step: end running attempts past their timeout or heartbeat timeout.

        An attempt running longer than its rollout's ``timeout_s`` becomes timeout; else one
        without a heartbeat for ``heartbeat_timeout_s`` becomes unresponsive. Each rollout is
        then requeued or failed per its config. ``now`` defaults to the current time.
        Returns the attempts it ended (status timeout or unresponsive).
        """
        return await self._write(queue.expire_attempts, time.time() if now is None else now)

    # -- queries -----------------------------------------------------------------------------
    async def get_rollout(self, rollout_id: str, with_attempts: bool = True) -> Rollout:
        """One rollout, with its attempts (oldest first) unless ``with_attempts`` is False. Raises NotFound."""
        return await self._read(records.get_rollout, rollout_id, with_attempts)

    async def get_rollouts(self, rollout_ids: list[str], with_attempts: bool = True) -> list[Rollout]:
        """Several rollouts in one transaction, in the order given, as :meth:`get_rollout` returns each.

        Raises NotFound naming every id that does not exist (nothing is returned then).
        """
        if not rollout_ids:
            return []
        return await self._read(records.get_rollouts, rollout_ids, with_attempts)

    async def get_attempt(self, rollout_id: str, attempt_id: str) -> Attempt:
        """One attempt of a rollout. Raises NotFound."""
        return await self._read(records.get_attempt, rollout_id, attempt_id)

    async def query_rollouts(self, query: RolloutQuery) -> Page[Rollout]:
        """Rollouts matching all given filters, oldest first: one page of them and the total count."""
        return await self._read(records.query_rollouts, query)

    async def wait_for_rollouts(self, rollout_ids: list[str], timeout_s: float) -> WaitResult:
        """Wait until all rollouts are finished or ``timeout_s`` passes.

        Returns the finished rollouts and the ids still pending, both in the order given.
        Raises NotFound (before waiting) if an id does not exist.
        """
        ids = list(dict.fromkeys(rollout_ids))
        if not ids:
            return WaitResult(finished=[], pending=[])
        deadline = time.monotonic() + max(timeout_s, 0.0)
        delay = _WAIT_POLL_MIN_S
        pending = ids
        while True:
            pending = await self._read(records.unfinished_rollouts, pending)
            remaining = deadline - time.monotonic()
            if not pending or remaining <= 0:
                break
            await asyncio.sleep(min(delay, remaining))
            delay = min(delay * 1.5, _WAIT_POLL_MAX_S)
        return await self._read(records.wait_result, ids)

    # -- spans -------------------------------------------------------------------------------
    async def add_spans(self, spans_in: list[SpanIn]) -> AddSpansResult:
        """Store spans in one transaction, numbering them per attempt in arrival order.

        Idempotent: a span whose (trace_id, span_id) is stored already, or repeats within the
        batch, is skipped and counted in ``duplicates``. Spans of ended attempts are accepted.
        Raises NotFound if a span names a rollout or attempt that does not exist, or an attempt
        of another rollout (nothing is stored then); BadInput for values that cannot be stored.
        """
        if not spans_in:
            return AddSpansResult(inserted=0, duplicates=0)
        return await self._write(spans.add_spans, spans_in)

    async def add_reward(self, span: SpanIn, final_value: float | None) -> AddSpansResult:
        """Store a reward span; with ``final_value``, also make it the rollout's reward. One transaction."""
        if span.rollout_id is None:
            raise BadInput("a reward span needs a rollout id")
        return await self._write(spans.add_reward, span, span.rollout_id, final_value)

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
        return await self._read(spans.query_spans, rollout_id, attempt_id, limit, offset)

    async def spans_of_rollouts(self, rollout_ids: list[str]) -> dict[str, list[Span]]:
        """Every stored span of each rollout, in one transaction, keyed by rollout id in the order given.

        Each list is in :meth:`query_spans` order (rollout-level spans, then each attempt's by
        sequence id); a rollout without spans has an empty list. Raises NotFound naming every id
        that does not exist.
        """
        if not rollout_ids:
            return {}
        return await self._read(spans.spans_of_rollouts, rollout_ids)

    async def read_rollouts(self, rollout_ids: list[str]) -> list[RolloutWithSpans]:
        """Rollouts with their attempts and every span, in the order given, in one transaction.

        What the trainer reads back for a step (one request, not one per rollout). Raises NotFound
        naming every id that does not exist.
        """
        if not rollout_ids:
            return []
        return await self._read(spans.read_rollouts, rollout_ids)

    # -- workers and model versions ----------------------------------------------------------
    async def list_workers(self) -> list[Worker]:
        """Every worker that ever dequeued, in order of first appearance."""
        return await self._read(records.list_workers)

    async def add_model_version(self, record: ModelVersionCreate) -> ModelVersion:
        """Record a model version. Raises Conflict if that version number is recorded already."""
        return await self._write(records.add_model_version, record)

    async def latest_model_version(self) -> ModelVersion | None:
        """The record with the highest version number, or None if there is none."""
        return await self._read(records.latest_model_version)


def _is_data_exception(error: sa_exc.DBAPIError) -> bool:
    """Whether the driver's error is SQL's class 22, *data exception* (a value out of range, bad input)."""
    cause: BaseException | None = error.orig
    while cause is not None:
        if str(getattr(cause, "sqlstate", None) or getattr(cause, "pgcode", None) or "").startswith("22"):
            return True
        cause = cause.__cause__
    return False


def _reason(error: BaseException) -> str:
    """The driver's message without SQLAlchemy's statement dump."""
    orig = getattr(error, "orig", None)
    text = str(orig if orig is not None else error).strip()
    return text.splitlines()[0] if text else type(error).__name__
