"""The Lightning Client's worker: pull rollouts from a server, run the agent, report the outcome.

One ``Worker`` runs ``concurrency`` runner loops in one process. Each loop:
dequeue (long-poll) → run the agent function inside the attempt's tracing context, sending
heartbeats → flush the attempt's spans → finish the attempt (succeeded, or failed with the
exception's details). A worker killed mid-rollout loses only that attempt: the server's watchdog
marks it unresponsive and requeues or fails the rollout per its config; spans already sent stay.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import math
import os
import socket
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from opentelemetry.trace import Status, StatusCode

from agentbolt import semconv
from agentbolt.client.emit import emit_reward
from agentbolt.client.http import ServerClient
from agentbolt.client.rollout import AgentFunction, RolloutFunction, rollout
from agentbolt.client.tracing import AttemptContext, attempt_scope, install_tracing, tracer
from agentbolt.errors import AgentboltError, IllegalTransition, ServerUnreachable, StoreUnavailable
from agentbolt.types import LLM, POLICY_MODEL, Attempt, AttemptFinish, Claim, ErrorInfo, RolloutMode

log = logging.getLogger(__name__)



@dataclass
class WorkerStats:
    claimed: int = 0
    succeeded: int = 0
    failed: int = 0
    abandoned: int = 0  # attempts that ran past their timeout; the server's watchdog ends them
    finish_refused: int = 0  # attempts the server had already ended (e.g. timed out) when we reported


class Worker:
    """Runs an agent function on rollouts pulled from an agentbolt server.

    Args:
        agent: a function ``(task, llm) -> reward | None``, sync or async (``@agentbolt.rollout``).
        server_url: the server's base URL, e.g. ``http://127.0.0.1:8420``.
        api_key: the server's API key, if it has one.
        concurrency: rollouts run at once in this process.
        worker_id: prefix of the runner ids (default ``HOST-PID``); runner ``i`` is ``{worker_id}-{i}``.
        modes: only take rollouts of these modes (train/val/test); None takes any.
        max_rollouts: stop after claiming this many (None: run until stopped).
        idle_exit_s: stop when no rollout arrived for this long (None: wait forever).
        model: model name handed to the agent in ``llm.model``; default: the server's latest model
            version record, else :data:`~agentbolt.types.POLICY_MODEL`.
    """

    def __init__(
        self,
        agent: AgentFunction | RolloutFunction,
        server_url: str,
        *,
        api_key: str | None = None,
        concurrency: int = 1,
        worker_id: str | None = None,
        modes: list[RolloutMode] | None = None,
        max_rollouts: int | None = None,
        idle_exit_s: float | None = None,
        model: str | None = None,
        poll_wait_s: float = 5.0,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.agent = rollout(agent)
        self.server_url = server_url.rstrip("/")
        self.api_key = api_key
        self.concurrency = concurrency
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}"
        self.modes = modes
        self.max_rollouts = max_rollouts
        self.idle_exit_s = idle_exit_s
        self.model = model
        self.poll_wait_s = poll_wait_s
        self.stats = WorkerStats()
        self._reserved = 0
        self._stop = asyncio.Event()

    def stop(self) -> None:
        """Ask the runner loops to stop after their current rollout."""
        self._stop.set()

    def run_sync(self) -> WorkerStats:
        return asyncio.run(self.run())

    async def run(self) -> WorkerStats:
        """Run until stopped, ``max_rollouts`` claimed, or idle for ``idle_exit_s``."""
        self._stop = asyncio.Event()
        self._tracing = install_tracing(self.server_url, self.api_key, self.worker_id)
        # Sync agents get threads of their own: on the loop's default executor (a handful of threads)
        # they would cap concurrency and starve what else needs it, e.g. name lookups of new connections.
        self._agent_threads = ThreadPoolExecutor(self.concurrency, thread_name_prefix="agentbolt-agent")
        try:
            async with ServerClient(self.server_url, self.api_key) as client:
                self._client = client
                if self.model is None:
                    latest = await client.latest_model_version()
                    self.model = latest.model if latest else POLICY_MODEL
                await asyncio.gather(*(self._runner(f"{self.worker_id}-{i}") for i in range(self.concurrency)))
            await asyncio.to_thread(self._tracing.flush)
        finally:
            self._agent_threads.shutdown(wait=False, cancel_futures=True)
        return self.stats

    async def _runner(self, runner_id: str) -> None:
        idle_since = asyncio.get_running_loop().time()
        backoff = 0.5
        while not self._stop.is_set():
            if self.max_rollouts is not None and self._reserved >= self.max_rollouts:
                return
            self._reserved += 1
            try:
                claim = await self._client.dequeue(runner_id, self.modes, wait_s=self.poll_wait_s)
            except (ServerUnreachable, StoreUnavailable) as exc:
                self._reserved -= 1
                log.warning("%s: dequeue failed (%s); retrying in %.1fs", runner_id, exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            backoff = 0.5
            if claim is None:
                self._reserved -= 1
                idle = asyncio.get_running_loop().time() - idle_since
                if self.idle_exit_s is not None and idle >= self.idle_exit_s:
                    return
                continue
            self.stats.claimed += 1
            await self._run_attempt(runner_id, claim)
            idle_since = asyncio.get_running_loop().time()

    def _llm_for(self, attempt: Attempt) -> LLM:
        return LLM(
            base_url=f"{self.server_url}/rollouts/{attempt.rollout_id}/attempts/{attempt.attempt_id}/v1",
            model=self.model or POLICY_MODEL,
            api_key=self.api_key or "agentbolt",
        )

    async def _run_attempt(self, runner_id: str, claim: Claim) -> None:
        rollout, attempt = claim.rollout, claim.attempt
        ctx = AttemptContext(rollout=rollout, attempt=attempt)
        self._tracing.exporter.rollouts.add(rollout.rollout_id)
        heartbeats = asyncio.create_task(self._heartbeat(runner_id, attempt, rollout.config.heartbeat_timeout_s))
        finish: AttemptFinish | None
        try:
            with attempt_scope(ctx):
                finish = await self._call_agent(ctx, self._llm_for(attempt))
        finally:
            heartbeats.cancel()
        # Spans must reach the server before the attempt is reported finished.
        if not await asyncio.to_thread(self._tracing.flush):
            log.error("%s: spans of attempt %s were not all sent", runner_id, attempt.attempt_id)
        self._tracing.exporter.rollouts.discard(rollout.rollout_id)
        if finish is None:
            self.stats.abandoned += 1
            return
        try:
            await self._client.finish(attempt, finish)
        except IllegalTransition as exc:
            self.stats.finish_refused += 1
            log.warning("%s: the server had already ended attempt %s: %s", runner_id, attempt.attempt_id, exc)
            return
        except AgentboltError as exc:
            log.error("%s: could not report attempt %s: %s", runner_id, attempt.attempt_id, exc)
            return
        if finish.status == "succeeded":
            self.stats.succeeded += 1
        else:
            self.stats.failed += 1

    async def _call_agent(self, ctx: AttemptContext, llm: LLM) -> AttemptFinish | None:
        """Run the agent in the attempt's root span; None when it overran its timeout."""
        rollout, attempt = ctx.rollout, ctx.attempt
        attributes: dict[str, str | int] = {
            semconv.ROLLOUT_ID: rollout.rollout_id,
            semconv.ATTEMPT_ID: attempt.attempt_id,
            semconv.ATTEMPT_NUMBER: attempt.number,
            semconv.AGENT_FUNCTION: self.agent.name,
            semconv.ROLLOUT_MODE: rollout.mode,
        }
        with tracer().start_as_current_span(semconv.SPAN_ATTEMPT, attributes=attributes) as root:
            try:
                call: Any = self.agent.fn(rollout.input, llm) if self.agent.is_async else self._in_thread(rollout, llm)
                result = await asyncio.wait_for(call, rollout.config.timeout_s)
                reward = _reward_from_result(result, self.agent.name)
                if reward is not None:
                    emit_reward(reward)
            except asyncio.TimeoutError:
                root.set_status(Status(StatusCode.ERROR, f"timed out after {rollout.config.timeout_s}s"))
                log.warning("attempt %s ran past its %ss timeout", attempt.attempt_id, rollout.config.timeout_s)
                return None
            except Exception as exc:
                root.record_exception(exc)
                root.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
                error = ErrorInfo(
                    type=type(exc).__qualname__,
                    message=str(exc)[:20_000],
                    traceback="".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-200_000:],
                )
                return AttemptFinish(status="failed", error=error, reward=ctx.final_reward)
            root.set_status(Status(StatusCode.OK))
        return AttemptFinish(status="succeeded", reward=ctx.final_reward)

    def _in_thread(self, rollout: Any, llm: LLM) -> asyncio.Future[Any]:
        """Run the sync agent on the worker's own threads, in a copy of the attempt's context."""
        context = contextvars.copy_context()
        run = functools.partial(context.run, self.agent.fn, rollout.input, llm)
        return asyncio.get_running_loop().run_in_executor(self._agent_threads, run)

    async def _heartbeat(self, runner_id: str, attempt: Attempt, timeout_s: float | None) -> None:
        interval = min(timeout_s / 3, 10.0) if timeout_s else 10.0
        while True:
            await asyncio.sleep(interval)
            try:
                await self._client.heartbeat(attempt, runner_id)
            except IllegalTransition:
                log.warning("%s: attempt %s was ended by the server; still running it", runner_id, attempt.attempt_id)
                return
            except AgentboltError as exc:
                log.warning("%s: heartbeat for %s failed: %s", runner_id, attempt.attempt_id, exc)


def _reward_from_result(result: Any, agent_name: str) -> float | None:
    if result is None:
        return None
    if isinstance(result, (bool, int, float)):
        value = float(result)
        if not math.isfinite(value):
            raise ValueError(f"agent {agent_name} returned {result!r}; a reward must be finite")
        return value
    raise TypeError(
        f"agent {agent_name} returned {type(result).__name__} {result!r:.80}; "
        "return a number (the reward) or None (and report rewards with agentbolt.emit_reward)"
    )
