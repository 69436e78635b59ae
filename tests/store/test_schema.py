"""Opening a store: URLs, schema creation, and the schema version check."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa

from agentbolt.errors import BadInput, StoreUnavailable
from agentbolt.store import SCHEMA_VERSION, Store
from agentbolt.store.schema import schema_info
from agentbolt.types import AttemptFinish, AttemptStatus, RolloutStatus

from .factories import enqueue, execute_raw


async def _set_schema_version(url: str, version: int) -> None:
    await execute_raw(url, sa.update(schema_info).values(version=version))


async def test_open_creates_the_schema_and_reopening_keeps_the_data(store_url: str) -> None:
    first = Store(store_url)
    await first.open()
    [rollout] = await enqueue(first, 1)
    await first.close()

    again = Store(store_url)
    await again.open()
    try:
        assert (await again.get_rollout(rollout.rollout_id)).input == {"i": 0}
    finally:
        await again.close()
    assert (await execute_raw(store_url, sa.select(schema_info.c.version))).scalar_one() == SCHEMA_VERSION


async def test_a_database_with_a_newer_schema_version_is_refused(store_url: str) -> None:
    store = Store(store_url)
    await store.open()
    await store.close()
    await _set_schema_version(store_url, SCHEMA_VERSION + 1)
    with pytest.raises(StoreUnavailable, match=f"schema version {SCHEMA_VERSION + 1}.*Upgrade agentbolt"):
        await Store(store_url).open()


async def test_agentbolt_tables_without_schema_info_are_refused(store_url: str) -> None:
    store = Store(store_url)
    await store.open()
    await store.close()
    await execute_raw(store_url, sa.text("DROP TABLE schema_info"))
    with pytest.raises(StoreUnavailable, match="no schema_info"):
        await Store(store_url).open()


async def test_sqlite_store_uses_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "a.db"  # missing folders are created
    store = Store(f"sqlite+aiosqlite:///{path}")
    await store.open()
    await store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("mysql://u@h/db", "scheme 'mysql' is not supported"),
        ("sqlite+pysqlite:///a.db", "write sqlite:///PATH.db"),
        ("postgresql://u@h/db", "postgresql\\+asyncpg"),
        ("sqlite+aiosqlite://", "in-memory"),
        ("sqlite+aiosqlite:///:memory:", "in-memory"),
        ("sqlite://", "in-memory"),
        ("just/a/path.db", "not a database URL"),
    ],
)
def test_unsupported_urls_are_bad_input(url: str, match: str) -> None:
    with pytest.raises(BadInput, match=match):
        Store(url)


@pytest.mark.parametrize(
    ("first", "then"),
    [("sqlite", "sqlite+aiosqlite"), ("sqlite+aiosqlite", "sqlite")],
    ids=["sqlite-then-aiosqlite-spelling", "aiosqlite-spelling-then-sqlite"],
)
async def test_both_sqlite_url_forms_open_the_same_store(tmp_path: Path, first: str, then: str) -> None:
    path = tmp_path / "a.db"
    store = Store(f"{first}:///{path}")
    assert store.backend == "sqlite"
    await store.open()
    try:
        [rollout] = await enqueue(store, 1)
        claimed = await store.dequeue("w1")
        assert claimed is not None and claimed.rollout.rollout_id == rollout.rollout_id
    finally:
        await store.close()

    again = Store(f"{then}:///{path}")
    assert again.backend == "sqlite"
    await again.open()
    try:
        done = await again.finish_attempt(
            rollout.rollout_id, claimed.attempt.attempt_id, AttemptFinish(status="succeeded", reward=1.0)
        )
        assert (done.status, done.reward) == (RolloutStatus.SUCCEEDED, 1.0)
        assert (await again.get_rollout(rollout.rollout_id)).attempts == [
            claimed.attempt.model_copy(update={"status": AttemptStatus.SUCCEEDED, "ended_at": done.finished_at})
        ]
    finally:
        await again.close()


_WITHOUT_AIOSQLITE = """
import asyncio, sys
sys.modules["aiosqlite"] = None  # importing it now raises ImportError, as where it is not installed
from agentbolt.store import Store
from agentbolt.types import RolloutCreate

async def main(directory: str) -> None:
    for scheme in ("sqlite", "sqlite+aiosqlite"):
        store = Store(f"{scheme}:///{directory}/{scheme}.db")
        await store.open()
        [rollout] = await store.enqueue([RolloutCreate(input={"i": 0})])
        claimed = await store.dequeue("w1")
        assert claimed is not None and claimed.rollout.rollout_id == rollout.rollout_id
        await store.close()
    print("ok", flush=True)

asyncio.run(main(sys.argv[1]))
"""


async def test_the_sqlite_store_works_without_aiosqlite_installed(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _WITHOUT_AIOSQLITE,
        str(tmp_path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert out == b"ok\n"


async def test_an_unreachable_postgres_server_raises_store_unavailable() -> None:
    store = Store("postgresql+asyncpg://postgres@127.0.0.1:1/postgres")
    with pytest.raises(StoreUnavailable, match="cannot open the store at postgresql\\+asyncpg"):
        await store.open()


async def test_using_a_store_before_open_raises_store_unavailable(tmp_path: Path) -> None:
    store = Store(f"sqlite+aiosqlite:///{tmp_path / 'a.db'}")
    assert store.backend == "sqlite"
    with pytest.raises(StoreUnavailable, match="not open"):
        await store.dequeue("w")


async def test_sqlite_write_waits_for_another_writer_without_blocking_the_event_loop(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    store = Store(f"sqlite+aiosqlite:///{path}")
    await store.open()
    locked, release = threading.Event(), threading.Event()

    def other_process_writes() -> None:
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")  # holds the write lock, as another process would
        locked.set()
        release.wait(10)
        conn.execute("COMMIT")
        conn.close()

    holder = asyncio.create_task(asyncio.to_thread(other_process_writes))
    await asyncio.to_thread(locked.wait, 10)
    try:
        write = asyncio.create_task(enqueue(store, 1))
        ticks = 0
        while ticks < 5:  # the event loop keeps running while the write waits for the lock
            await asyncio.sleep(0.01)
            ticks += 1
        assert not write.done()
        release.set()
        [rollout] = await write
        await holder
        assert (await store.get_rollout(rollout.rollout_id)).status is RolloutStatus.QUEUING
    finally:
        release.set()
        await store.close()
