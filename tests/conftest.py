"""Fixtures shared by all tests.

``store_url`` / ``store`` run a test once per store backend: SQLite (a temp file) and PostgreSQL
(a fresh database per test on the server named by ``AGENTBOLT_TEST_PG_URL``; start one with
``export AGENTBOLT_TEST_PG_URL=$(bash scripts/postgres.sh | tail -1)``); ``postgres_url`` is such a
fresh PostgreSQL database alone. Without that variable the PostgreSQL runs are skipped, except under CI
(``CI`` set), where they fail.

``scripts/test.sh`` installs every extra and sets ``AGENTBOLT_TESTS_REQUIRE_EXTRAS=1``: then a suite
skipped because an extra's package is missing (``pytest.importorskip``) fails the run instead of
leaving it green.
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
REQUIRE_EXTRAS_ENV = "AGENTBOLT_TESTS_REQUIRE_EXTRAS"
# How the skips of a missing package read: importorskip's own words, and the reasons our tests give it.
_MISSING_PACKAGE_SKIP = ("could not import", "train extra", "needs agentbolt[", "is not installed")
_missing_package_skips: list[str] = []


def _skip_reason(report: pytest.CollectReport | pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr)


def _note_skip(report: pytest.CollectReport | pytest.TestReport) -> None:
    if report.skipped and any(words in _skip_reason(report) for words in _MISSING_PACKAGE_SKIP):
        _missing_package_skips.append(f"{report.nodeid}: {_skip_reason(report)}")


def pytest_collectreport(report: pytest.CollectReport) -> None:
    _note_skip(report)  # a module-level importorskip skips the whole file at collection


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _note_skip(report)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get(REQUIRE_EXTRAS_ENV) and _missing_package_skips:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(
                f"{REQUIRE_EXTRAS_ENV} is set, but {len(_missing_package_skips)} test(s) or file(s) were skipped "
                "for a missing package (install every extra: "
                "bash scripts/setup.sh dev,postgres,train,frameworks,verl):",
                red=True,
            )
            for line in _missing_package_skips:
                reporter.write_line(f"  {line}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


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
        yield f"sqlite:///{tmp_path / 'agentbolt.db'}"
    else:
        async for url in _fresh_postgres_database():
            yield url


@pytest.fixture
async def postgres_url() -> AsyncIterator[str]:
    """URL of an empty PostgreSQL database (for tests that need PostgreSQL itself: several server processes)."""
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
