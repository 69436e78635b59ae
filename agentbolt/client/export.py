"""``SpanSender``: sends the worker's buffered spans to the server, for all running attempts at once.

The OTel SDK's ``BatchSpanProcessor`` + OTLP/HTTP exporter cost the worker a thread hop per attempt
(``force_flush`` from ``asyncio.to_thread``), a ``requests`` call per attempt and a connection pool of
its own. Here spans wait in :class:`~agentbolt.client.tracing.SpanBuffer` and go out on the worker's
event loop and connection pool: every :data:`SEND_INTERVAL_S` (so a long attempt's spans stream, and
survive a killed worker), and when an attempt ends (:meth:`SpanSender.flush`, awaited before its finish
is sent: nothing is acknowledged before its spans are stored). Attempts that end while a send is in
flight share the next one, so under load one request carries the spans of many attempts.

Sending is retried on a transport error or a 503 (the worker's :class:`~agentbolt.client.http.RetryPolicy`);
that is safe, the server stores each span (trace id, span id) once. A request the server refuses (4xx) is
sent again attempt by attempt, so one attempt's bad span does not lose its neighbours'.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

from opentelemetry.sdk.trace import ReadableSpan

from agentbolt import semconv
from agentbolt.client.http import ServerClient
from agentbolt.client.otlp_encode import encode_request
from agentbolt.client.tracing import SpanBuffer
from agentbolt.errors import AgentboltError, ServerUnreachable, StoreUnavailable

log = logging.getLogger(__name__)

SEND_INTERVAL_S = 0.5  # the SDK batch processor's default delay, kept: spans of a running attempt stream
MAX_SPANS_PER_REQUEST = 1_000  # far under the server's body limit for the client's own small spans


class SpanSender:
    """Sends the spans of ``buffer`` through ``client``; run :meth:`run` as a task beside the worker.

    Args:
        buffer: where the process's tracing keeps the ended spans of this server's rollouts.
        client: the worker's client of that server.
        interval_s: how often spans buffered meanwhile are sent without waiting for an attempt to end.
    """

    def __init__(self, buffer: SpanBuffer, client: ServerClient, interval_s: float = SEND_INTERVAL_S) -> None:
        self.buffer = buffer
        self.client = client
        self.interval_s = interval_s
        self.sent = 0  # the buffer's ``ended`` count that finished sends have reached
        self.requests = 0
        self.failed_spans = 0  # spans the server refused or never got, after retries: logged, not resent
        self._sending: asyncio.Task[bool] | None = None

    async def flush(self) -> bool:
        """Send every span buffered so far (with whatever else is buffered by then); True when all were stored."""
        target = self.buffer.ended
        stored = True
        while self.sent < target:
            if self._sending is None:
                self._sending = asyncio.create_task(self._send())
            # Shielded: a cancelled flush (a released attempt) must not cut a send the others wait on.
            stored = await asyncio.shield(self._sending) and stored
        return stored

    async def run(self) -> None:
        """Send what was buffered every ``interval_s``, until cancelled."""
        while True:
            await asyncio.sleep(self.interval_s)
            if self.buffer.ended > self.sent:
                await self.flush()

    async def aclose(self) -> bool:
        """Wait for a send in flight, then send what is left; True when all were stored."""
        if self._sending is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._sending)
        return await self.flush()

    async def _send(self) -> bool:
        """Take everything buffered and send it; False if any of it was not stored."""
        spans, upto = self.buffer.take()
        try:
            stored = True
            for start in range(0, len(spans), MAX_SPANS_PER_REQUEST):
                stored = await self._post(spans[start : start + MAX_SPANS_PER_REQUEST]) and stored
            return stored
        finally:
            self.sent = upto
            self._sending = None

    async def _post(self, spans: Sequence[ReadableSpan], split: bool = True) -> bool:
        self.requests += 1
        try:
            await self.client.send_spans(encode_request(spans))
        except (ServerUnreachable, StoreUnavailable) as exc:
            self.failed_spans += len(spans)
            log.error("%d span(s) were not sent: %s", len(spans), exc)
            return False
        except AgentboltError as exc:
            by_attempt = _by_attempt(spans)
            if split and len(by_attempt) > 1:
                log.warning(
                    "the server refused a request of %d span(s) (%s); sending them attempt by attempt", len(spans), exc
                )
                results = [await self._post(group, split=False) for group in by_attempt.values()]
                return all(results)
            self.failed_spans += len(spans)
            log.error("the server refused %d span(s) of attempt %s: %s", len(spans), next(iter(by_attempt)), exc)
            return False
        return True


def _by_attempt(spans: Sequence[ReadableSpan]) -> dict[str, list[ReadableSpan]]:
    groups: dict[str, list[ReadableSpan]] = {}
    for span in spans:
        attempt_id = str((span.attributes or {}).get(semconv.ATTEMPT_ID))
        groups.setdefault(attempt_id, []).append(span)
    return groups
