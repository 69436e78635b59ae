"""Per-attempt tracing context: which attempt a span belongs to, and which spans the exporter sends."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from agentbolt import semconv
from agentbolt.client.tracing import AttributedSpanExporter, attempt_scope, current_attempt

from .spans import MemoryTracing, attempt_context, in_attempt


def test_the_current_attempt_is_set_only_inside_its_scope() -> None:
    assert current_attempt() is None
    with in_attempt("ro-1", "at-1") as ctx:
        assert current_attempt() is ctx
    assert current_attempt() is None


async def test_concurrent_attempts_in_one_process_each_see_their_own() -> None:
    inside: list[str] = []
    both_inside = asyncio.Event()

    async def run(rollout_id: str) -> str | None:
        with attempt_scope(attempt_context(rollout_id, f"at-{rollout_id}")):
            inside.append(rollout_id)
            if len(inside) == 2:
                both_inside.set()
            await both_inside.wait()  # both scopes are open at once
            seen = current_attempt()
            return seen.rollout.rollout_id if seen else None

    assert await asyncio.gather(run("ro-a"), run("ro-b")) == ["ro-a", "ro-b"]


def _from_bare_thread() -> str | None:
    seen: list[str | None] = []

    def look() -> None:
        ctx = current_attempt()
        seen.append(ctx.attempt.attempt_id if ctx else None)

    thread = threading.Thread(target=look)  # a bare thread: no copied context
    thread.start()
    thread.join()
    return seen[0]


def test_a_bare_thread_is_attributed_to_the_only_running_attempt() -> None:
    with in_attempt("ro-1", "at-1"):
        assert _from_bare_thread() == "at-1"


def test_a_bare_thread_is_not_guessed_when_several_attempts_run() -> None:
    with in_attempt("ro-1", "at-1"), attempt_scope(attempt_context("ro-2", "at-2")):
        assert _from_bare_thread() is None


def test_spans_started_inside_an_attempt_carry_its_ids_whoever_creates_them() -> None:
    otel = MemoryTracing()
    tracer = otel.tracer()  # stands for any OTel instrumentation inside the agent
    with in_attempt("ro-1", "at-1"):
        with tracer.start_as_current_span("instrumented"):
            pass
        with tracer.start_as_current_span("elsewhere", attributes={semconv.ROLLOUT_ID: "ro-9"}):
            pass  # a span that names its rollout keeps it
    with tracer.start_as_current_span("outside"):
        pass
    stamped = {s.name: dict(s.attributes or {}) for s in otel.spans()}
    assert stamped["instrumented"] == {semconv.ROLLOUT_ID: "ro-1", semconv.ATTEMPT_ID: "at-1"}
    assert stamped["elsewhere"] == {semconv.ROLLOUT_ID: "ro-9"}
    assert stamped["outside"] == {}


class _Inbox(SpanExporter):
    def __init__(self, result: SpanExportResult = SpanExportResult.SUCCESS) -> None:
        self.result = result
        self.batches: list[list[str]] = []

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.batches.append([s.name for s in spans])
        return self.result


def _ended_spans() -> list[ReadableSpan]:
    otel = MemoryTracing()
    tracer = otel.tracer()
    with in_attempt("ro-mine", "at-1"), tracer.start_as_current_span("mine"):
        pass
    with in_attempt("ro-other-server", "at-2"), tracer.start_as_current_span("other"):
        pass
    with tracer.start_as_current_span("unattributed"):
        pass
    return otel.spans()


def test_the_exporter_sends_only_its_own_rollouts_and_counts_unattributed_spans() -> None:
    inbox = _Inbox()
    exporter = AttributedSpanExporter(inbox)
    exporter.rollouts.add("ro-mine")
    assert exporter.export(_ended_spans()) is SpanExportResult.SUCCESS
    assert inbox.batches == [["mine"]]
    assert exporter.unattributed == 1
    assert exporter.failed_batches == 0


def test_a_batch_the_server_refuses_is_counted_and_reported_as_failed() -> None:
    inbox = _Inbox(SpanExportResult.FAILURE)
    exporter = AttributedSpanExporter(inbox)
    exporter.rollouts.add("ro-mine")
    assert exporter.export(_ended_spans()) is SpanExportResult.FAILURE
    assert exporter.failed_batches == 1


def test_nothing_to_send_is_not_an_export() -> None:
    inbox = _Inbox()
    exporter = AttributedSpanExporter(inbox)
    assert exporter.export(_ended_spans()) is SpanExportResult.SUCCESS
    assert inbox.batches == []
