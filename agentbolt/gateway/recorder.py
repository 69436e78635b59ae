"""Batched span writes for the gateway (group commit), in one of two durabilities.

Every gateway call hands its spans (built by ``llm_spans``) to the recorder; a writer task stores
whatever has gathered in one ``Store.add_spans`` transaction, so under load one commit serves many calls.

- *answer* durability, :meth:`SpanRecorder.record`: the call waits until its spans are stored, then
  answers. The writer starts a commit at once when a call waits, and the calls that arrive while it runs
  go together in the next one. An answered call's spans are in the store, so whichever server process
  ends its attempt (``agentbolt serve --workers N``, several servers on one PostgreSQL) finds them.
- *finish* durability, :meth:`SpanRecorder.add`: the call answers at once and its spans are written at
  most ``interval_s`` later; no call waits for the database. That leaves a window in which an answered
  call's span is not yet durable: a server crash inside it loses those spans, and another process that
  ends the attempt does not see them. :meth:`flush` closes the window on demand; the server's
  finish-attempt route awaits it for the attempt (through the gateway's attempt-finish hook), which makes
  a finished rollout whole when this process is the only one.

A write that fails for good (the store refuses the spans, or stays unavailable through the retries) ends
the wait all the same: the answer goes out, and the spans are counted in :attr:`SpanRecorder.dropped` and
logged. App shutdown flushes everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from dataclasses import dataclass

from agentbolt.errors import AgentboltError, StoreUnavailable
from agentbolt.store import Store
from agentbolt.types import SpanIn

log = logging.getLogger(__name__)

_RETRIES = 5


@dataclass(slots=True)
class _Call:
    """One call's spans in the queue (written in one transaction, or not at all)."""

    number: int  # in the order calls were added
    attempt_id: str | None
    spans: list[SpanIn]
    stored: asyncio.Future[bool] | None  # answer durability: the waiting call's outcome (True: stored)


class SpanRecorder:
    """Writes gateway spans to ``store`` in batches.

    Args:
        store: where spans go (``Store.add_spans``).
        interval_s: longest a span of :meth:`add` waits before its batch is written.
        max_batch: calls per transaction at most.
    """

    def __init__(self, store: Store, *, interval_s: float = 0.005, max_batch: int = 512) -> None:
        self.store = store
        self.interval_s = interval_s
        self.max_batch = max_batch
        self.recorded = 0
        self.dropped = 0
        self._queue: list[_Call] = []
        self._added = 0  # number of the last call added
        self._done = 0  # calls written (or given up on), in order
        self._pending_by_attempt: Counter[str | None] = Counter()
        self._wake = asyncio.Event()
        self._urgent = False  # write now: a call waits for its spans, a flush waits, or a batch is full
        self._progress = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None

    @property
    def pending(self) -> int:
        """Calls whose spans are not written yet."""
        return self._added - self._done

    def start(self) -> None:
        """Start the writer task (on the running event loop)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="agentbolt-span-recorder")

    def add(self, attempt_id: str | None, spans: list[SpanIn]) -> None:
        """Queue one call's spans (all of them land in the same transaction). Never blocks (finish durability)."""
        self._enqueue(attempt_id, spans, None)
        if len(self._queue) >= self.max_batch:
            self._urgent = True
        self._wake.set()

    async def record(self, attempt_id: str | None, spans: list[SpanIn]) -> bool:
        """Queue one call's spans and wait until they are written (answer durability).

        The writer commits at once, together with every call queued meanwhile. Cancelling the wait (the
        client went away) leaves the spans queued: they are written all the same.

        Returns:
            True once the spans are stored; False when they were dropped for good (counted in ``dropped``
            and logged): the call answers either way.
        """
        stored: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._enqueue(attempt_id, spans, stored)
        self._urgent = True
        self._wake.set()
        if self._task is None or self._task.done():  # no writer (not started / stopped): write here
            await self._write_available()
        return await asyncio.shield(stored)

    async def flush(self, attempt_id: str | None = None) -> None:
        """Wait until the spans queued so far (only ``attempt_id``'s, if given) are written or given up on."""
        if attempt_id is not None and not self._pending_by_attempt.get(attempt_id):
            return
        target = self._added
        if self._done >= target:
            return
        if self._task is None or self._task.done():  # no writer (not started / stopped): write here
            await self._write_available()
            return
        self._urgent = True
        self._wake.set()
        async with self._progress:
            await self._progress.wait_for(lambda: self._done >= target)

    async def aclose(self) -> None:
        """Write everything queued, then stop the writer."""
        await self.flush()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._write_available()

    def _enqueue(self, attempt_id: str | None, spans: list[SpanIn], stored: asyncio.Future[bool] | None) -> None:
        self._added += 1
        self._queue.append(_Call(self._added, attempt_id, spans, stored))
        self._pending_by_attempt[attempt_id] += 1

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            if not self._urgent:
                # Group commit: let the calls of the next few ms join this transaction.
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._full_or_urgent(), self.interval_s)
            await self._write_available()

    async def _full_or_urgent(self) -> None:
        while not self._urgent and len(self._queue) < self.max_batch:
            self._wake.clear()
            await self._wake.wait()

    async def _write_available(self) -> None:
        # Calls queued while a batch is being written go in the next one, written straight after.
        while self._queue:
            self._wake.clear()
            self._urgent = False
            batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
            outcomes: list[bool] = []
            try:
                outcomes = await self._write(batch)
            finally:
                await self._settle(batch, outcomes)
        self._wake.clear()

    async def _settle(self, batch: list[_Call], outcomes: list[bool]) -> None:
        """Account for a written batch and wake whoever waits on it (a call without an outcome was not stored)."""
        for i, call in enumerate(batch):
            self._pending_by_attempt[call.attempt_id] -= 1
            if self._pending_by_attempt[call.attempt_id] <= 0:
                del self._pending_by_attempt[call.attempt_id]
            if call.stored is not None and not call.stored.done():
                call.stored.set_result(i < len(outcomes) and outcomes[i])
        self._done = max(self._done, batch[-1].number)
        async with self._progress:
            self._progress.notify_all()

    async def _write(self, batch: list[_Call]) -> list[bool]:
        """Store a batch; whether each call's spans were stored."""
        spans = [s for call in batch for s in call.spans]
        if not spans:
            return [True] * len(batch)
        outcome = await self._store_with_retries(spans)
        if outcome == "stored":
            return [True] * len(batch)
        if outcome == "unavailable":
            self.dropped += len(spans)
            log.error("dropped %d gateway span(s): the store stayed unavailable through %d tries", len(spans), _RETRIES)
            return [False] * len(batch)
        # The batch as a whole was refused (e.g. an attempt that vanished): store call by call, so one
        # bad call does not cost the others; a call is still stored whole or not at all.
        stored = []
        for call in batch:
            ok = not call.spans or await self._store_with_retries(call.spans) == "stored"
            if not ok:
                self.dropped += len(call.spans)
                rollout_id = call.spans[0].rollout_id
                log.error("dropped %d gateway span(s) the store refused (rollout %s)", len(call.spans), rollout_id)
            stored.append(ok)
        return stored

    async def _store_with_retries(self, spans: list[SpanIn]) -> str:
        """``"stored"``, ``"refused"`` (the store rejects them for good) or ``"unavailable"``."""
        delay = 0.05
        for attempt in range(_RETRIES):
            try:
                result = await self.store.add_spans(spans)
            except StoreUnavailable:
                pass
            except AgentboltError as exc:  # NotFound, BadInput: retrying will not help
                log.warning("store refused %d gateway span(s): %s", len(spans), exc)
                return "refused"
            except Exception:
                log.exception("writing %d gateway span(s) failed (try %d of %d)", len(spans), attempt + 1, _RETRIES)
            else:
                self.recorded += result.inserted
                return "stored"
            await asyncio.sleep(delay)
            delay *= 4
        return "unavailable"
