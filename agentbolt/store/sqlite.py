"""Running the store's transactions on a SQLite file: the runner and the connection settings it needs."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, Connection

log = logging.getLogger(__name__)

T = TypeVar("T")

_SQLITE_BUSY_TIMEOUT_MS = 30_000
_SQLITE_READERS = 4
_SQLITE_BUSY = 5  # the SQLITE_BUSY result code
# The writer thread checkpoints the WAL after this many writes on the event loop.
_SQLITE_CHECKPOINT_EVERY = 200


class SQLiteRunner:
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
        """Run ``txn`` in one transaction (a write transaction if ``write``), committed when it returns."""
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
        """Wait for running transactions, then close every connection."""

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
