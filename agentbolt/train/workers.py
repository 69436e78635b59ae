"""The worker processes of ``agentbolt train``: ``python -m agentbolt worker`` subprocesses running the agent."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import TracebackType
from typing import IO

STOP_TIMEOUT_S = 10.0  # a worker gets this long to finish its current rollouts after SIGTERM, then it is killed


class WorkerProcesses:
    """Local worker processes running ``agent`` against the server at ``server_url``; a context manager.

    Entering starts them, leaving stops them (terminate, then kill after :data:`STOP_TIMEOUT_S`).
    Their stdout and stderr go to ``log_path``, appended.

    Args:
        agent: the agent function, ``MODULE:FUNCTION`` (imported in each worker, relative to ``cwd``).
        server_url: the server the workers pull rollouts from.
        count: how many processes.
        concurrency: rollouts each process runs at once.
        model: the model name the agent is handed in ``llm.model``.
        name: prefix of the worker ids (``NAME-w0``, ``NAME-w1``...).
        cwd: the directory the processes run in.
        log_path: where their output goes.
        api_key: the server's API key, handed to the processes in ``AGENTBOLT_API_KEY``.
    """

    def __init__(
        self,
        agent: str,
        server_url: str,
        *,
        count: int,
        concurrency: int,
        model: str,
        name: str,
        cwd: Path,
        log_path: Path,
        api_key: str | None = None,
    ) -> None:
        self.command = [
            sys.executable, "-m", "agentbolt", "worker", agent,
            "--server", server_url, "-n", str(concurrency), "--model", model,
        ]  # fmt: skip
        self.count, self.name, self.cwd, self.log_path = count, name, cwd, log_path
        # The key travels in the environment (agentbolt worker reads AGENTBOLT_API_KEY), never on a command line.
        self.env = {**os.environ, "AGENTBOLT_API_KEY": api_key} if api_key else None
        self.procs: list[subprocess.Popen[bytes]] = []
        self._log: IO[bytes] | None = None

    def __enter__(self) -> WorkerProcesses:
        self._log = self.log_path.open("ab")
        self.procs = [
            subprocess.Popen(
                [*self.command, "--worker-id", f"{self.name}-w{i}"],
                cwd=self.cwd,
                env=self.env,
                stdout=self._log,
                stderr=self._log,
            )
            for i in range(self.count)
        ]
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
        if self._log is not None:
            self._log.close()

    def check_alive(self) -> None:
        """Raise RuntimeError when a worker process has exited (a worker runs until it is stopped)."""
        dead = [proc for proc in self.procs if proc.poll() is not None]
        if dead:
            raise RuntimeError(
                f"{len(dead)} worker process(es) exited (status {dead[0].returncode}); see {self.log_path}"
            )
