"""The Lightning Client's worker: pull rollouts from a server, run the agent, report the outcome.

One ``Worker`` runs ``concurrency`` runner loops in one process. Each loop:
dequeue (long-poll) → run the agent function inside the attempt's tracing context, sending
heartbeats → flush the attempt's spans → finish the attempt (succeeded, or failed with the
exception's details).

Nothing reported is lost to a dropped connection: heartbeat, finish and release are idempotent on the
server (the attempt id names what they change) and the worker's client retries them with bounded
backoff (:data:`~agentbolt.client.http.WORKER_RETRY`); so does the span sender
(:mod:`agentbolt.client.export`), and the server stores a span once however often it is sent.

Stopping: :meth:`Worker.shutdown` (SIGTERM or SIGINT with ``handle_signals``) takes no more rollouts,
gives running attempts ``shutdown_grace_s`` to finish, then *releases* the rest: their spans so far are
sent and the server requeues their rollouts at once, without counting the attempt against
``max_attempts`` (``POST .../release``). A worker killed outright loses only its running attempts: the
server's watchdog marks them unresponsive after ``heartbeat_timeout_s`` (15 s by default) and requeues or
fails the rollouts per their config; spans already sent stay.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import math
import os
import signal
import socket
import threading
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
from opentelemetry.trace import Status, StatusCode

from agentbolt import semconv
from agentbolt.client.batching import RequestBatcher
from agentbolt.client.emit import emit_reward
from agentbolt.client.export import SpanSender
from agentbolt.client.http import WORKER_RETRY, ServerClient
from agentbolt.client.rollout import AgentFunction, RolloutFunction, rollout
from agentbolt.client.tracing import AttemptContext, attempt_scope, install_tracing, tracer
from agentbolt.errors import AgentboltError, IllegalTransition, ServerUnreachable, StoreUnavailable
from agentbolt.types import LLM, POLICY_MODEL, Attempt, AttemptFinish, Claim, ErrorInfo, Rollout, RolloutMode
from agentbolt.types.queue import AttemptRelease

log = logging.getLogger(__name__)

# Heartbeats per heartbeat timeout: three may be lost (or slowed by retries) before the watchdog acts.
HEARTBEATS_PER_TIMEOUT = 4
MAX_HEARTBEAT_INTERVAL_S = 10.0
# Under train/workers.py's STOP_TIMEOUT_S (10 s), so a stopped worker releases before it is killed.
DEFAULT_SHUTDOWN_GRACE_S = 5.0
SHUTDOWN_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# Why an agent task was cancelled.
TIMED_OUT = "timed out"
RELEASED = "released"


@dataclass
class WorkerStats:
    claimed: int = 0
    succeeded: int = 0
    failed: int = 0
    abandoned: int = 0  # attempts that ran past their timeout; the server's watchdog ends them
    finish_refused: int = 0  # attempts the server had already ended (e.g. timed out) when we reported
    released: int = 0  # attempts given back unfinished at shutdown; their rollouts were requeued


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
        poll_wait_s: how long one dequeue long-polls the server.
        shutdown_grace_s: after :meth:`shutdown`, how long running attempts may still finish before they
            are released.
        handle_signals: make SIGTERM and SIGINT call :meth:`shutdown` (a second signal releases at once);
            only in the main thread (the ``agentbolt worker`` command sets it).
        transport: an httpx transport for the calls to the server (tests use one that drops connections).
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
        shutdown_grace_s: float = DEFAULT_SHUTDOWN_GRACE_S,
        handle_signals: bool = False,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if shutdown_grace_s < 0:
            raise ValueError("shutdown_grace_s must not be negative")
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
        self.shutdown_grace_s = shutdown_grace_s
        self.handle_signals = handle_signals
        self.transport = transport
        self.stats = WorkerStats()
        self._reserved = 0
        self._stop = asyncio.Event()  # no more dequeues
        self._releasing = False  # running attempts are being given back: cancel every agent, start none
        self._grace: asyncio.TimerHandle | None = None
        # Each running agent task, and why it was cancelled if it was: timed out, or released.
        self._agents: dict[asyncio.Task[AttemptFinish | None], str | None] = {}
        # The runners' dequeues, finishes and heartbeats, each kind sent together (see agentbolt.client.batching).
        self._claims: RequestBatcher[str, Claim | None] = RequestBatcher(self._dequeue_batch)
        self._finishes: RequestBatcher[tuple[Attempt, AttemptFinish], Rollout] = RequestBatcher(self._finish_batch)
        self._heartbeats: RequestBatcher[tuple[Attempt, str], None] = RequestBatcher(self._heartbeat_batch)

    def stop(self) -> None:
        """Ask the runner loops to stop after their current rollout."""
        self._stop.set()

    def shutdown(self) -> None:
        """Stop gracefully: take no more rollouts, let running attempts finish for ``shutdown_grace_s``,
        then release the rest (their rollouts are requeued at once). A second call releases at once.

        Call it on the worker's event loop (signal handlers installed by ``handle_signals`` are).
        """
        if self._grace is not None:
            log.warning("shutting down now: releasing running attempts")
            self._release_running()
            return
        log.warning(
            "shutting down: no more rollouts; running attempts get %.1fs to finish, then are released",
            self.shutdown_grace_s,
        )
        self._stop.set()
        self._grace = asyncio.get_running_loop().call_later(self.shutdown_grace_s, self._release_running)

    def _release_running(self) -> None:
        """Cancel every running agent (and any that starts from now on): their attempts are released."""
        self._releasing = True
        for agent in self._agents:
            self._cancel_agent(agent, RELEASED)

    def _cancel_agent(self, agent: asyncio.Task[AttemptFinish | None], why: str) -> None:
        if not agent.done() and self._agents.get(agent) is None:
            self._agents[agent] = why
            agent.cancel()

    def run_sync(self) -> WorkerStats:
        return asyncio.run(self.run())

    async def run(self) -> WorkerStats:
        """Run until stopped, ``max_rollouts`` claimed, or idle for ``idle_exit_s``."""
        self._stop = asyncio.Event()
        self._releasing = False
        self._grace = None
        self._tracing = install_tracing(self.server_url, self.worker_id)
        handled = self._handle_signals() if self.handle_signals else []
        try:
            async with ServerClient(
                self.server_url, self.api_key, retry=WORKER_RETRY, transport=self.transport
            ) as client:
                self._client = client
                self._spans = SpanSender(self._tracing.buffer, client)
                sending = asyncio.create_task(self._spans.run())
                try:
                    if self.model is None:
                        latest = await client.latest_model_version()
                        self.model = latest.model if latest else POLICY_MODEL
                    await asyncio.gather(*(self._runner(f"{self.worker_id}-{i}") for i in range(self.concurrency)))
                finally:
                    sending.cancel()
                    await asyncio.wait({sending})
                    await self._spans.aclose()
        finally:
            if self._grace is not None:
                self._grace.cancel()
            for sig in handled:
                asyncio.get_running_loop().remove_signal_handler(sig)
        return self.stats

    def _handle_signals(self) -> list[signal.Signals]:
        """Route SIGTERM and SIGINT to :meth:`shutdown`; the signals it could take (none off the main thread)."""
        loop = asyncio.get_running_loop()
        handled = []
        for sig in SHUTDOWN_SIGNALS:
            try:
                loop.add_signal_handler(sig, self.shutdown)
            except (NotImplementedError, RuntimeError, ValueError):  # Windows, or not the main thread
                log.debug("cannot handle %s here; the worker stops only when asked", sig.name)
                continue
            handled.append(sig)
        return handled

    async def _runner(self, runner_id: str) -> None:
        idle_since = asyncio.get_running_loop().time()
        backoff = 0.5
        while not self._stop.is_set():
            if self.max_rollouts is not None and self._reserved >= self.max_rollouts:
                return
            self._reserved += 1
            try:
                claim = await self._claims.call(runner_id)
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
            if self._stop.is_set():  # the claim raced a shutdown: give it straight back
                await self._release_attempt(runner_id, claim.attempt, "the worker was shutting down when it got it")
                return
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
        self._tracing.buffer.rollouts.add(rollout.rollout_id)
        loop = asyncio.get_running_loop()
        # Timers, not a task per attempt waiting on each: a rollout usually ends before its first beat.
        heartbeat = _Heartbeat(functools.partial(self._beat, runner_id, attempt), rollout.config.heartbeat_timeout_s)
        with attempt_scope(ctx):
            agent = asyncio.create_task(self._call_agent(ctx, self._llm_for(attempt)))
            self._agents[agent] = None
            limit = rollout.config.timeout_s
            timeout = None if limit is None else loop.call_later(limit, self._cancel_agent, agent, TIMED_OUT)
            if self._releasing:
                self._cancel_agent(agent, RELEASED)
            try:
                await asyncio.wait({agent})  # not ``await agent``: cancelling this runner must not end in its result
            finally:
                if timeout is not None:
                    timeout.cancel()
                heartbeat.stop()
                if not agent.done():  # this runner was cancelled: stop the agent
                    self._cancel_agent(agent, RELEASED)
                    await asyncio.wait({agent})  # its root span ends, marked released
                released = self._agents.pop(agent) == RELEASED
        finish = None if released else agent.result()
        # Spans must reach the server before the attempt is reported finished (or released).
        if not await self._spans.flush():
            log.error("%s: spans of attempt %s were not all sent", runner_id, attempt.attempt_id)
        self._tracing.buffer.rollouts.discard(rollout.rollout_id)
        if released:
            await self._release_attempt(runner_id, attempt, "the worker shut down before the attempt finished")
            return
        if finish is None:
            self.stats.abandoned += 1
            return
        if not await self._report(runner_id, attempt, "report", self._finishes.call((attempt, finish))):
            return
        if finish.status == "succeeded":
            self.stats.succeeded += 1
        else:
            self.stats.failed += 1

    async def _report(self, runner_id: str, attempt: Attempt, what: str, call: Awaitable[Rollout]) -> bool:
        """Await the finish or release ``call``; False (logged, counted) if the server refused it or was unreachable."""
        try:
            await call
        except IllegalTransition as exc:
            self.stats.finish_refused += 1
            log.warning("%s: the server had already ended attempt %s: %s", runner_id, attempt.attempt_id, exc)
            return False
        except AgentboltError as exc:
            log.error("%s: could not %s attempt %s: %s", runner_id, what, attempt.attempt_id, exc)
            return False
        return True

    async def _release_attempt(self, runner_id: str, attempt: Attempt, reason: str) -> None:
        """Give the attempt back unfinished, so the server requeues its rollout at once."""
        release = self._client.release(attempt, AttemptRelease(worker_id=runner_id, reason=reason))
        if not await self._report(runner_id, attempt, "release", release):
            return
        self.stats.released += 1
        log.info("%s: released attempt %s of rollout %s", runner_id, attempt.attempt_id, attempt.rollout_id)

    async def _call_agent(self, ctx: AttemptContext, llm: LLM) -> AttemptFinish | None:
        """Run the agent in the attempt's root span; None when it overran its timeout or was released."""
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
                result = await call
                reward = _reward_from_result(result, self.agent.name)
                if reward is not None:
                    emit_reward(reward)
            except asyncio.CancelledError:
                # Only _run_attempt's timer and a release cancel this task; the span must end here, saying why.
                if self._agents.get(asyncio.current_task()) == TIMED_OUT:  # type: ignore[arg-type]
                    root.set_status(Status(StatusCode.ERROR, f"timed out after {rollout.config.timeout_s}s"))
                    log.warning("attempt %s ran past its %ss timeout", attempt.attempt_id, rollout.config.timeout_s)
                else:
                    root.set_status(
                        Status(StatusCode.ERROR, "released: the worker shut down before the attempt finished")
                    )
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
        """Run the sync agent on a thread of its own, in a copy of the attempt's context.

        Not the loop's default executor (a handful of threads): agents would cap concurrency and starve what
        else needs it, e.g. name lookups of new connections. A daemon thread: an agent that overran its
        timeout or was released, and never returns, does not keep the process from exiting.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        run = functools.partial(contextvars.copy_context().run, self.agent.fn, rollout.input, llm)

        def settle(result: Any, error: BaseException | None) -> None:
            if future.done():  # timed out or released meanwhile
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)

        def target() -> None:
            try:
                result, error = run(), None
            except BaseException as exc:  # handed to the awaiting coroutine, like an executor would
                result, error = None, exc
            try:
                loop.call_soon_threadsafe(settle, result, error)
            except RuntimeError:  # the loop has closed: nobody waits for this agent any more
                pass

        threading.Thread(target=target, name=f"agentbolt-agent-{rollout.rollout_id}", daemon=True).start()
        return future

    async def _dequeue_batch(self, runner_ids: list[str]) -> list[Claim | None]:
        """One long-polling dequeue for the runners that want a rollout: each one's claim, or None."""
        if len(runner_ids) == 1:  # the one-rollout route, as for any client
            return [await self._client.dequeue(runner_ids[0], self.modes, wait_s=self.poll_wait_s)]
        claims = await self._client.dequeue_many(runner_ids, self.modes, wait_s=self.poll_wait_s)
        by_runner = {claim.attempt.worker_id: claim for claim in claims}
        return [by_runner.get(runner_id) for runner_id in runner_ids]

    async def _finish_batch(self, finishes: list[tuple[Attempt, AttemptFinish]]) -> list[Rollout | AgentboltError]:
        """One request ending the attempts that ended meanwhile: each one's rollout, or why it was refused."""
        if len(finishes) == 1:
            attempt, finish = finishes[0]
            return [await self._client.finish(attempt, finish)]
        return await self._client.finish_many(finishes)

    async def _heartbeat_batch(self, beats: list[tuple[Attempt, str]]) -> list[AgentboltError | None]:
        """One request with the heartbeats due meanwhile: None for each accepted, else why it was refused."""
        if len(beats) == 1:
            attempt, runner_id = beats[0]
            await self._client.heartbeat(attempt, runner_id)
            return [None]
        return await self._client.heartbeats([(attempt, runner_id) for attempt, runner_id in beats])

    async def _beat(self, runner_id: str, attempt: Attempt) -> bool:
        """Send one heartbeat; False once the server has ended the attempt (no more beats)."""
        try:
            await self._heartbeats.call((attempt, runner_id))
        except IllegalTransition:
            log.warning("%s: attempt %s was ended by the server; still running it", runner_id, attempt.attempt_id)
            return False
        except AgentboltError as exc:
            log.warning("%s: heartbeat for %s failed: %s", runner_id, attempt.attempt_id, exc)
        return True


class _Heartbeat:
    """Beats every ``timeout_s / HEARTBEATS_PER_TIMEOUT`` (at most :data:`MAX_HEARTBEAT_INTERVAL_S`) from a
    timer; a task exists only while a beat is being sent. ``beat`` returns False to stop beating."""

    def __init__(self, beat: Callable[[], Awaitable[bool]], timeout_s: float | None) -> None:
        self.interval_s = (
            min(timeout_s / HEARTBEATS_PER_TIMEOUT, MAX_HEARTBEAT_INTERVAL_S) if timeout_s else MAX_HEARTBEAT_INTERVAL_S
        )
        self._beat = beat
        self._loop = asyncio.get_running_loop()
        self._sending: asyncio.Task[None] | None = None
        self._stopped = False
        self._timer = self._loop.call_later(self.interval_s, self._due)

    def _due(self) -> None:
        self._sending = asyncio.create_task(self._send())

    async def _send(self) -> None:
        more = await self._beat()
        self._sending = None
        if more and not self._stopped:
            self._timer = self._loop.call_later(self.interval_s, self._due)

    def stop(self) -> None:
        self._stopped = True
        self._timer.cancel()
        if self._sending is not None:
            self._sending.cancel()


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
