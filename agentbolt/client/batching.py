"""``RequestBatcher``: one kind of queue call from all of a worker's runners, sent as batch requests.

With 32-64 runners, a request per dequeue and per finish was most of the server's work
(``benchmarks/worker_throughput.py``): each paid HTTP parsing, routing, validation and a transaction
for one row. The worker sends them through a batcher instead: calls made while a request is in flight
wait for it and then go out together in the next one (the group commit the span sender does for spans).
A lone call waits for nothing: when no request is in flight it goes out on the next turn of the loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from agentbolt.types.queue import MAX_BATCH

Item = TypeVar("Item")
Result = TypeVar("Result")


class RequestBatcher(Generic[Item, Result]):
    """Gathers calls into batch requests, one request in flight at a time.

    Args:
        send: sends one batch; returns one outcome per item, in order: the item's result, or the exception
            its call is to raise. An exception ``send`` raises is raised by every call of that batch.
        max_items: the most items in one request (the server's :data:`~agentbolt.types.queue.MAX_BATCH`).
    """

    def __init__(
        self, send: Callable[[list[Item]], Awaitable[Sequence[Result | BaseException]]], max_items: int = MAX_BATCH
    ) -> None:
        self._send = send
        self.max_items = max_items
        self.requests = 0
        self._waiting: list[tuple[Item, asyncio.Future[Result]]] = []
        self._sending: asyncio.Task[None] | None = None

    async def call(self, item: Item) -> Result:
        """Send ``item`` with the others waiting; its result, or raises its exception."""
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        if self._sending is None:
            # Starts on the next turn of the loop: the calls made meanwhile join this request.
            self._sending = asyncio.create_task(self._send_waiting())
        return await future

    async def _send_waiting(self) -> None:
        batch: list[tuple[Item, asyncio.Future[Result]]] = []
        try:
            while self._waiting:
                batch = [(i, f) for i, f in self._waiting[: self.max_items] if not f.done()]
                del self._waiting[: self.max_items]
                if not batch:
                    continue
                self.requests += 1
                try:
                    outcomes = await self._send([item for item, _ in batch])
                    if len(outcomes) != len(batch):
                        raise RuntimeError(f"a batch send gave {len(outcomes)} outcomes for {len(batch)} calls")
                except Exception as exc:
                    outcomes = [exc] * len(batch)
                for (_, future), outcome in zip(batch, outcomes, strict=True):
                    if future.done():  # its caller was cancelled meanwhile
                        continue
                    if isinstance(outcome, BaseException):
                        future.set_exception(outcome)
                    else:
                        future.set_result(outcome)
                batch = []
        finally:
            self._sending = None
            for _, future in [*batch, *self._waiting]:  # only when cancelled (the loop is closing)
                future.cancel()
            self._waiting = []
