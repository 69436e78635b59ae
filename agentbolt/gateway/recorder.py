"""Batched span writes for the gateway (group commit), off the response path.

A gateway call hands its spans (built by ``llm_spans``) to :meth:`SpanRecorder.add` and answers at
once; a writer task stores whatever has gathered at most ``interval_s`` later, in one ``Store.add_spans``
transaction. So under load one commit serves many calls, and no call waits for the database.

The price is a window (``interval_s``, a few ms) in which an answered call's span is not yet durable:
a server crash inside it loses those spans. :meth:`flush` closes the window on demand; the server's
finish-attempt route awaits it for the attempt (through the gateway's attempt-finish hook), so a finished
rollout's LLM spans are all stored before the worker hears back, and app shutdown flushes everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter

from agentbolt.errors import AgentboltError, StoreUnavailable
from agentbolt.store import Store
from agentbolt.types import SpanIn

log = logging.getLogger(__name__)

_RETRIES = 5


class SpanRecorder:
    """Writes gateway spans to ``store`` in batches.

    Args:
        store: where spans go (``Store.add_spans``).
        interval_s: longest a span waits before its batch is written.
        max_batch: spans per transaction at most.
    """

    def __init__(self, store: Store, *, interval_s: float = 0.005, max_batch: int = 512) -> None:
        self.store = store
        self.interval_s = interval_s
        self.max_batch = max_batch
        self.recorded = 0
        self.dropped = 0
        self._queue: list[tuple[int, str | None, list[SpanIn]]] = []  # (call number, attempt, its spans)
        self._added = 0  # sequence number of the last call added
        self._done = 0  # calls written (or given up on), in order
        self._pending_by_attempt: Counter[str | None] = Counter()
        self._wake = asyncio.Event()
        self._urgent = False
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
        """Queue one call's spans (all of them land in the same transaction). Never blocks."""
        self._added += 1
        self._queue.append((self._added, attempt_id, spans))
        self._pending_by_attempt[attempt_id] += 1
        if len(self._queue) >= self.max_batch:
            self._urgent = True
        self._wake.set()

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
        while self._queue:
            self._wake.clear()
            self._urgent = False
            batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
            try:
                await self._write(batch)
            finally:
                for _, attempt_id, _ in batch:
                    self._pending_by_attempt[attempt_id] -= 1
                    if self._pending_by_attempt[attempt_id] <= 0:
                        del self._pending_by_attempt[attempt_id]
                self._done = batch[-1][0]
                async with self._progress:
                    self._progress.notify_all()
        self._wake.clear()

    async def _write(self, batch: list[tuple[int, str | None, list[SpanIn]]]) -> None:
        calls = [spans for _, _, spans in batch]
        spans = [s for call in calls for s in call]
        if not spans:
            return
        outcome = await self._store_with_retries(spans)
        if outcome == "stored":
            return
        if outcome == "unavailable":
            self.dropped += len(spans)
            log.error("dropped %d gateway span(s): the store stayed unavailable through %d tries", len(spans), _RETRIES)
            return
        # The batch as a whole was refused (e.g. an attempt that vanished): store call by call, so one
        # bad call does not cost the others; a call is still stored whole or not at all.
        for call in calls:
            if call and await self._store_with_retries(call) != "stored":
                self.dropped += len(call)
                log.error("dropped %d gateway span(s) the store refused (rollout %s)", len(call), call[0].rollout_id)

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
