"""Per-attempt tracing context for the Lightning Client.

The worker installs two things on the process's OpenTelemetry TracerProvider (creating one if the
agent has none):

* ``AttemptSpanProcessor`` stamps ``agentbolt.rollout_id`` / ``agentbolt.attempt_id`` on every span
  *started* inside an attempt — ours, the agent's own, and any OTel instrumentation's — so spans land
  in the right attempt whoever created them.
* ``SpanBuffer``, which keeps the ended spans of the worker's rollouts and drops (and counts) spans
  started outside any attempt, since the server rejects unattributed spans. The worker's
  :class:`~agentbolt.client.export.SpanSender` sends what it holds as OTLP/HTTP protobuf to the server's
  ``/v1/traces`` on the worker's own connection pool: every ``SEND_INTERVAL_S`` and whenever an attempt
  ends, one request for the spans of all attempts at once.

The current attempt is a ``contextvars.ContextVar``, so concurrent attempts in one process (async
tasks, or threads started with a copied context such as ``asyncio.to_thread``) stay apart. When a
span starts with no attempt in its context and exactly one attempt is running in the process, it is
attributed to that one (covers agents that start bare threads).
"""

from __future__ import annotations

import contextvars
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace import Span as SdkSpan

from agentbolt import semconv
from agentbolt.types import Attempt, Rollout

log = logging.getLogger(__name__)

TRACER_NAME = "agentbolt"


@dataclass
class AttemptContext:
    """What the client knows about the attempt running in the current context."""

    rollout: Rollout
    attempt: Attempt
    final_reward: float | None = None  # the last final reward emitted, if any
    rewards_emitted: int = field(default=0)


_current: contextvars.ContextVar[AttemptContext | None] = contextvars.ContextVar("agentbolt_attempt", default=None)
_running: dict[str, AttemptContext] = {}
_running_lock = threading.Lock()


def current_attempt() -> AttemptContext | None:
    """The attempt the calling code runs in, or None outside any attempt."""
    ctx = _current.get()
    if ctx is not None:
        return ctx
    with _running_lock:
        if len(_running) == 1:
            return next(iter(_running.values()))
    return None


@contextmanager
def attempt_scope(ctx: AttemptContext) -> Iterator[AttemptContext]:
    """Make ``ctx`` the current attempt for the code inside the ``with`` block."""
    token = _current.set(ctx)
    with _running_lock:
        _running[ctx.attempt.attempt_id] = ctx
    try:
        yield ctx
    finally:
        with _running_lock:
            _running.pop(ctx.attempt.attempt_id, None)
        _current.reset(token)


class AttemptSpanProcessor(SpanProcessor):
    """Stamps the current attempt's ids on every span when it starts."""

    def on_start(self, span: SdkSpan, parent_context: otel_context.Context | None = None) -> None:
        if span.attributes and semconv.ROLLOUT_ID in span.attributes:
            return
        ctx = current_attempt()
        if ctx is not None:  # both at once: one pass through the SDK's attribute lock and checks
            span.set_attributes(
                {semconv.ROLLOUT_ID: ctx.attempt.rollout_id, semconv.ATTEMPT_ID: ctx.attempt.attempt_id}
            )

    def on_end(self, span: ReadableSpan) -> None:
        pass

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


class SpanBuffer(SpanProcessor):
    """Holds the ended spans of rollouts this buffer's server handed out until a :class:`SpanSender` takes them;
    counts and logs the spans started outside any attempt (not sent: the server rejects unattributed spans).

    A process may work for several servers (each with its own buffer on the one global provider), so each
    buffer keeps only the rollouts registered with it by its worker. ``on_end`` may run on any thread.
    """

    def __init__(self) -> None:
        self.rollouts: set[str] = set()
        self.unattributed = 0  # spans started outside any attempt: not sent
        self.ended = 0  # spans buffered so far, all told: a flush waits until this many are sent
        self._spans: list[ReadableSpan] = []
        self._lock = threading.Lock()

    def on_start(self, span: SdkSpan, parent_context: otel_context.Context | None = None) -> None:
        pass

    def on_end(self, span: ReadableSpan) -> None:
        rollout_id = span.attributes.get(semconv.ROLLOUT_ID) if span.attributes else None
        if rollout_id is None:
            self.unattributed += 1
            # Warn once: hosts such as web frameworks can emit many spans outside any attempt.
            log.log(
                logging.WARNING if self.unattributed == 1 else logging.DEBUG,
                "not sending span %r: it started outside any rollout attempt "
                "(such spans are counted in SpanBuffer.unattributed)",
                span.name,
            )
        elif rollout_id in self.rollouts:
            with self._lock:
                self._spans.append(span)
                self.ended += 1

    def take(self) -> tuple[list[ReadableSpan], int]:
        """Every span buffered so far, and the ``ended`` count they bring the sent spans up to."""
        with self._lock:
            spans, self._spans = self._spans, []
            return spans, self.ended

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True  # sending is the worker's SpanSender's, on its event loop


@dataclass
class Tracing:
    provider: TracerProvider
    buffer: SpanBuffer


_installed: dict[str, Tracing] = {}
_install_lock = threading.Lock()


def install_tracing(server_url: str, worker_id: str) -> Tracing:
    """Hook agentbolt's processors onto the global TracerProvider (once per server URL)."""
    with _install_lock:
        existing = _installed.get(server_url)
        if existing is not None:
            return existing
        provider = trace.get_tracer_provider()
        if not isinstance(provider, TracerProvider):
            provider = TracerProvider(
                resource=Resource.create({semconv.SERVICE_NAME: "agentbolt-worker", semconv.WORKER_ID: worker_id})
            )
            trace.set_tracer_provider(provider)
        provider.add_span_processor(AttemptSpanProcessor())
        buffer = SpanBuffer()
        provider.add_span_processor(buffer)
        tracing = Tracing(provider=provider, buffer=buffer)
        _installed[server_url] = tracing
        return tracing


# The last global provider and agentbolt's tracer on it: ``get_tracer`` builds a new Tracer on every call.
_cached_tracer: tuple[trace.TracerProvider, trace.Tracer] | None = None


def tracer() -> trace.Tracer:
    """agentbolt's tracer on the global provider."""
    global _cached_tracer
    provider = trace.get_tracer_provider()
    if _cached_tracer is not None and _cached_tracer[0] is provider:
        return _cached_tracer[1]
    found = trace.get_tracer(TRACER_NAME)
    if isinstance(provider, TracerProvider):  # not the proxy's: its tracers change once a provider is set
        _cached_tracer = (provider, found)
    return found
