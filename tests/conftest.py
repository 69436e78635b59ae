"""Fixtures shared by all tests.

``store_url`` / ``store`` run a test once per store backend: SQLite (a temp file) and PostgreSQL
(a fresh database per test on the server named by ``AGENTBOLT_TEST_PG_URL``; start one with
``export AGENTBOLT_TEST_PG_URL=$(bash scripts/postgres.sh | tail -1)``). Without that variable
the PostgreSQL runs are skipped, except under CI (``CI`` set), where they fail.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from agentbolt.store import Store

PG_URL_ENV = "AGENTBOLT_TEST_PG_URL"

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
]


def postgres_server_url() -> str:
    """The test server's URL; skips the test (fails it under CI) when none is configured."""
    url = os.environ.get(PG_URL_ENV)
    if url:
        return url
    hint = f"set {PG_URL_ENV}, e.g. export {PG_URL_ENV}=$(bash scripts/postgres.sh | tail -1)"
    if os.environ.get("CI"):
        pytest.fail(f"CI must test PostgreSQL: {hint}")
    pytest.skip(f"PostgreSQL tests need a server: {hint}")


async def _fresh_postgres_database() -> AsyncIterator[str]:
    import asyncpg

    server = make_url(postgres_server_url())
    name = f"agentbolt_test_{uuid.uuid4().hex[:12]}"

    async def admin() -> asyncpg.Connection:
        return await asyncpg.connect(
            host=server.host or "127.0.0.1",
            port=server.port or 5432,
            user=server.username,
            password=server.password,
            database=server.database or "postgres",
        )

    conn = await admin()
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        conn = await admin()
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


@pytest.fixture(params=BACKENDS)
async def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """URL of an empty database, once per backend."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'agentbolt.db'}"
    else:
        async for url in _fresh_postgres_database():
            yield url


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    """An open store on an empty database, once per backend."""
    opened = Store(store_url)
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture(scope="session")
def tokenizer() -> Any:
    """SmolLM2's tokenizer, read from the demo GGUF (fetched into the cache on first use)."""
    pytest.importorskip("torch", reason="the engine needs the train extra: bash scripts/setup.sh dev,train")
    from agentbolt.engine import load_tokenizer

    return load_tokenizer("demo")
