"""Opening a store: URLs, schema creation, and the schema version check."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from agentbolt.errors import BadInput, StoreUnavailable
from agentbolt.store import SCHEMA_VERSION, Store
from agentbolt.store.schema import schema_info
from agentbolt.types import RolloutStatus

from .factories import enqueue


async def _set_schema_version(url: str, version: int) -> None:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(sa.update(schema_info).values(version=version))
    finally:
        await engine.dispose()


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
    engine = create_async_engine(store_url)
    try:
        async with engine.connect() as conn:
            assert (await conn.execute(sa.select(schema_info.c.version))).scalar_one() == SCHEMA_VERSION
    finally:
        await engine.dispose()


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
    engine = create_async_engine(store_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(sa.text("DROP TABLE schema_info"))
    finally:
        await engine.dispose()
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
        ("sqlite:///a.db", "sqlite\\+aiosqlite"),
        ("postgresql://u@h/db", "postgresql\\+asyncpg"),
        ("sqlite+aiosqlite://", "in-memory"),
        ("sqlite+aiosqlite:///:memory:", "in-memory"),
        ("just/a/path.db", "not a database URL"),
    ],
)
def test_unsupported_urls_are_bad_input(url: str, match: str) -> None:
    with pytest.raises(BadInput, match=match):
        Store(url)


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
