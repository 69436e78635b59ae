"""Run the Lightning Server on a background thread (for ``agentbolt train``, notebooks and tests)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Sequence
from types import TracebackType

import uvicorn

from agentbolt.gateway.backend import Backend
from agentbolt.server.app import create_app
from agentbolt.types import ServerConfig


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class BackgroundServer:
    """A real uvicorn server on its own thread and event loop. Use as a context manager.

    Port 0 in the config picks a free port; ``url`` is the address to reach it at. With a ``backend``
    the server also runs the OpenAI-compatible gateway on it, serving the ``fixed`` models beside it (the
    backends stay the caller's to close).
    """

    def __init__(self, config: ServerConfig, backend: Backend | None = None, fixed: Sequence[Backend] = ()) -> None:
        if config.port == 0:
            config = config.model_copy(update={"port": free_port(config.host)})
        self.config = config
        self.app = create_app(config, backend=backend, fixed=fixed)
        self._server = uvicorn.Server(
            uvicorn.Config(self.app, host=config.host, port=config.port, log_level="warning", access_log=False)
        )
        self._thread = threading.Thread(target=self._server.run, name="agentbolt-server", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.config.port}"

    def start(self, timeout_s: float = 30.0) -> BackgroundServer:
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError(f"the agentbolt server on {self.url} failed to start (see the log above)")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the agentbolt server on {self.url} did not start within {timeout_s}s")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
