"""Fixtures that start a real Lightning Server (uvicorn on a free loopback port, SQLite file)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from agentbolt.server.background import BackgroundServer
from agentbolt.types import ServerConfig


def _start(tmp_path: Path, **overrides: object) -> BackgroundServer:
    config = ServerConfig(port=0, store_url=f"sqlite:///{tmp_path / 'server.db'}", watchdog_interval_s=0.2, **overrides)
    return BackgroundServer(config).start()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[BackgroundServer]:
    live = _start(tmp_path)
    yield live
    live.stop()


@pytest.fixture
def keyed_server(tmp_path: Path) -> Iterator[BackgroundServer]:
    live = _start(tmp_path, api_key="s3cret-test-key")
    yield live
    live.stop()


@pytest.fixture
def small_limit_server(tmp_path: Path) -> Iterator[BackgroundServer]:
    live = _start(tmp_path, max_body_bytes=8192)
    yield live
    live.stop()
