"""Running the store's transactions on a SQLite file: the runner and the connection settings it needs."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, Connection

from agentbolt.errors import StoreUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")

_SQLITE_BUSY_TIMEOUT_MS = 30_000
_SQLITE_READERS = 4
_SQLITE_BUSY = 5  # the SQLITE_BUSY result code
# The writer thread checkpoints the WAL after this many write transactions.
_SQLITE_CHECKPOINT_EVERY = 200
# The most write transactions that share one commit; more wait for the next.
_MAX_GROUP = 256


@dataclass
class _Write(Generic[T]):
    """A write transaction waiting for its group's commit, and where its outcome goes."""

    txn: Callable[[Connection], T]
    done: asyncio.Future[T]
    result: Any = None
    error: BaseException | None = field(default=None)


class SQLiteRunner:
    """Runs each transaction on a SQLite file in one piece, with the stdlib (synchronous) driver.

    Why not an async driver: aiosqlite hops to its thread several times per statement, and each
    hop (plus the GIL hand-over) cost more than the SQL itself; the store managed ~90 rollouts/s.

    Writes run on the event loop itself: a write transaction is a few hundred microseconds of
    work that holds the GIL anyway, and handing it to a thread made the server ~40% slower.
    They are *group-committed*: the writes asked for within one turn of the event loop run one after
    another inside one ``BEGIN IMMEDIATE`` ... ``COMMIT``, each in a savepoint of its own (a write that
    raises is rolled back alone and raises to its caller alone), and each caller gets its answer once
    that commit is done, so nothing is acknowledged before it is durable. A commit writes the pages the
    group changed to the WAL once, not once per write: with 32-64 concurrent workers this halved the
    cost of a write (``benchmarks/store_throughput.py``). The event loop's connection does not wait
    for locks (``busy_timeout=0``): if another process holds the write lock, the group is redone on the
    writer thread, which waits up to ``busy_timeout`` without blocking the event loop. Checkpoints
    (copying the WAL into the database file, with fsync) also run on that thread, every so many
    writes, between two groups.

    Reads run on a few threads; in WAL mode they neither block the writer nor each other.
    """

    def __init__(self, url: URL) -> None:
        path = Path(url.database or "")
        path.parent.mkdir(parents=True, exist_ok=True)
        file_url = url.set(drivername="sqlite+pysqlite")
        # Readers and writes that must wait for another process.
        self._engine = sa.create_engine(file_url, pool_size=_SQLITE_READERS + 1)
        event.listen(self._engine, "connect", _sqlite_on_connect)
        # Writes on the event loop, on one connection held open between them.
        self._loop_engine = sa.create_engine(file_url, pool_size=1)
        event.listen(self._loop_engine, "connect", _sqlite_on_connect)
        event.listen(self._loop_engine, "connect", _sqlite_never_wait)
        self._loop_conn: Connection | None = None
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="agentbolt-sqlite-writer")
        self._readers = ThreadPoolExecutor(max_workers=_SQLITE_READERS, thread_name_prefix="agentbolt-sqlite-reader")
        self._pending: list[_Write[Any]] = []
        self._committer: asyncio.Task[None] | None = None
        self._writes_since_checkpoint = 0

    async def run(self, txn: Callable[[Connection], T], write: bool) -> T:
        """Run ``txn`` in one transaction (a write transaction if ``write``), committed when it returns."""
        loop = asyncio.get_running_loop()
        if not write:
            return await loop.run_in_executor(self._readers, _sqlite_read, self._engine, txn)
        pending: _Write[T] = _Write(txn, loop.create_future())
        self._pending.append(pending)
        if self._committer is None:
            # Started on the next turn of the loop: the writes asked for meanwhile join this group.
            self._committer = loop.create_task(self._commit_pending())
        return await pending.done

    async def _commit_pending(self) -> None:
        """Commit the waiting writes group by group, until none waits."""
        loop = asyncio.get_running_loop()
        group: list[_Write[Any]] = []
        try:
            while self._pending:
                group = [w for w in self._pending[:_MAX_GROUP] if not w.done.cancelled()]
                del self._pending[:_MAX_GROUP]
                try:
                    try:
                        _run_group(self._connection(), group)
                    except _WriteLockBusy:
                        await loop.run_in_executor(self._writer, _run_group_waiting, self._engine, group)
                except Exception as exc:  # the commit failed: no write of the group is stored
                    for w in group:
                        w.error = exc
                for w in group:
                    if w.done.done():
                        continue
                    if w.error is not None:
                        w.done.set_exception(w.error)
                    else:
                        w.done.set_result(w.result)
                self._writes_since_checkpoint += len(group)
                group = []
                if self._writes_since_checkpoint >= _SQLITE_CHECKPOINT_EVERY:
                    # No write in between: the checkpoint copies the whole WAL, so the next write starts
                    # it over and the file stays small.
                    self._writes_since_checkpoint = 0
                    await loop.run_in_executor(self._writer, self._run_checkpoint)
        finally:
            self._committer = None
            # Only when interrupted (the loop shutting down): what was not answered is not known to be stored.
            for w in [*group, *self._pending]:
                if not w.done.done():
                    w.done.set_exception(StoreUnavailable("the store was closed before this write was committed"))
            self._pending = []

    def _connection(self) -> Connection:
        """The event loop's write connection, opened on first use (again after an invalidating error)."""
        if self._loop_conn is None or self._loop_conn.closed or self._loop_conn.invalidated:
            self._loop_conn = self._loop_engine.connect()
        return self._loop_conn

    def _run_checkpoint(self) -> None:
        try:
            with self._engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")
        except Exception:  # a missed checkpoint is retried later; the WAL only grows meanwhile
            log.warning("SQLite WAL checkpoint failed", exc_info=True)

    async def close(self) -> None:
        """Wait for running transactions, then close every connection."""
        if self._committer is not None:
            await asyncio.wait({self._committer})

        def shut() -> None:
            self._writer.shutdown(wait=True)
            self._readers.shutdown(wait=True)
            if self._loop_conn is not None:
                self._loop_conn.close()
            self._loop_engine.dispose()
            self._engine.dispose()

        await asyncio.get_running_loop().run_in_executor(None, shut)


class _WriteLockBusy(Exception):
    """BEGIN IMMEDIATE found the write lock held (by another process); nothing was done."""


def _begin(conn: Connection, begin: str) -> None:
    # The driver's own transaction handling is off (see _sqlite_on_connect): we say BEGIN.
    try:
        conn.exec_driver_sql(begin)
    except sa_exc.OperationalError as e:
        if _is_sqlite_busy(e.orig):
            raise _WriteLockBusy() from e
        raise


def _sqlite_read(engine: sa.Engine, txn: Callable[[Connection], T]) -> T:
    with engine.connect() as conn:
        _begin(conn, "BEGIN")
        result = txn(conn)
        conn.commit()  # on an exception, closing the connection rolls back instead
        return result


def _run_group_waiting(engine: sa.Engine, group: list[_Write[Any]]) -> None:
    """:func:`_run_group` on a connection of ``engine``, which waits for the write lock (the writer thread's)."""
    with engine.connect() as conn:
        _run_group(conn, group)


def _run_group(conn: Connection, group: list[_Write[Any]]) -> None:
    """Run the writes of ``group`` in one transaction, each in its own savepoint, and commit.

    Each write's result or exception is left on it. Raises _WriteLockBusy (nothing done) when another
    connection holds the write lock, and whatever the commit raises (then nothing of the group is stored).
    """
    _begin(conn, "BEGIN IMMEDIATE")
    try:
        if len(group) == 1:  # alone: the transaction itself rolls it back if it raises
            only = group[0]
            try:
                only.result = only.txn(conn)
            except Exception as exc:
                only.error = exc
                conn.rollback()
                return
        else:
            driver = conn.connection.driver_connection
            assert driver is not None
            for w in group:
                # Our own savepoint statements, beside SQLAlchemy's (a body may take its own, nested in this one).
                driver.execute("SAVEPOINT agentbolt_write")
                try:
                    w.result = w.txn(conn)
                except Exception as exc:
                    w.error = exc
                    driver.execute("ROLLBACK TO agentbolt_write")
                driver.execute("RELEASE agentbolt_write")
        conn.commit()
    except BaseException:
        conn.rollback()
        raise


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
