"""Per-attempt tracing context for the Lightning Client.

The worker installs two things on the process's OpenTelemetry TracerProvider (creating one if the
agent has none):

* ``AttemptSpanProcessor`` stamps ``agentbolt.rollout_id`` / ``agentbolt.attempt_id`` on every span
  *started* inside an attempt — ours, the agent's own, and any OTel instrumentation's — so spans land
  in the right attempt whoever created them.
* a ``BatchSpanProcessor`` exporting over OTLP/HTTP to the server's ``/v1/traces``, behind
  ``AttributedSpanExporter``, which drops (and counts) spans started outside any attempt, since the
  server rejects unattributed spans. The OTLP exporter retries a batch on a connection error, a 429 or
  a 502-504, with exponential backoff for up to :data:`EXPORT_TIMEOUT_S`; resending is safe, the server
  stores each span (trace id, span id) once.

The current attempt is a ``contextvars.ContextVar``, so concurrent attempts in one process (async
tasks, or threads started with a copied context such as ``asyncio.to_thread``) stay apart. When a
span starts with no attempt in its context and exactly one attempt is running in the process, it is
attributed to that one (covers agents that start bare threads).
"""

from __future__ import annotations

import contextvars
import logging
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace import Span as SdkSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from agentbolt import semconv
from agentbolt.client.http import auth_headers
from agentbolt.types import Attempt, Rollout

log = logging.getLogger(__name__)

TRACER_NAME = "agentbolt"
# How long the exporter keeps retrying one batch: rides out a server restart of a few seconds.
EXPORT_TIMEOUT_S = 20.0


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
        if ctx is not None:
            span.set_attribute(semconv.ROLLOUT_ID, ctx.attempt.rollout_id)
            span.set_attribute(semconv.ATTEMPT_ID, ctx.attempt.attempt_id)

    def on_end(self, span: ReadableSpan) -> None:
        pass

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


class AttributedSpanExporter(SpanExporter):
    """Forwards the spans of rollouts this exporter's server handed out; counts and logs the rest.

    A process may work for several servers (each with its own exporter on the one global
    provider), so each exporter keeps only the rollouts registered with it by its worker.
    """

    def __init__(self, inner: SpanExporter) -> None:
        self.inner = inner
        self.rollouts: set[str] = set()
        self.unattributed = 0  # spans started outside any attempt: not sent
        self.failed_batches = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        keep = []
        for span in spans:
            rollout_id = span.attributes.get(semconv.ROLLOUT_ID) if span.attributes else None
            if rollout_id is None:
                self.unattributed += 1
                # Warn once: hosts such as web frameworks can emit many spans outside any attempt.
                log.log(
                    logging.WARNING if self.unattributed == 1 else logging.DEBUG,
                    "not sending span %r: it started outside any rollout attempt "
                    "(such spans are counted in AttributedSpanExporter.unattributed)",
                    span.name,
                )
            elif rollout_id in self.rollouts:
                keep.append(span)
        if not keep:
            return SpanExportResult.SUCCESS
        result = self.inner.export(keep)
        if result is not SpanExportResult.SUCCESS:
            self.failed_batches += 1
            log.error("the server refused or did not receive a batch of %d span(s)", len(keep))
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


@dataclass
class Tracing:
    provider: TracerProvider
    exporter: AttributedSpanExporter
    batch: BatchSpanProcessor

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Send every span ended so far; True when all went out."""
        return self.batch.force_flush(int(timeout_s * 1000))


_installed: dict[str, Tracing] = {}
_install_lock = threading.Lock()


def install_tracing(server_url: str, api_key: str | None, worker_id: str) -> Tracing:
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
        exporter = AttributedSpanExporter(
            OTLPSpanExporter(
                endpoint=f"{server_url.rstrip('/')}/v1/traces", headers=auth_headers(api_key), timeout=EXPORT_TIMEOUT_S
            )
        )
        batch = BatchSpanProcessor(exporter, schedule_delay_millis=500, max_export_batch_size=256)
        provider.add_span_processor(batch)
        tracing = Tracing(provider=provider, exporter=exporter, batch=batch)
        _installed[server_url] = tracing
        return tracing


def tracer() -> trace.Tracer:
    return trace.get_tracer(TRACER_NAME)
