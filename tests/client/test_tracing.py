"""Per-attempt tracing context: which attempt a span belongs to, which spans are sent, how and in what encoding."""

from __future__ import annotations

import asyncio
import threading

import httpx
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.trace import Link, Status, StatusCode

from agentbolt import semconv
from agentbolt.client.export import SpanSender
from agentbolt.client.http import NO_RETRY, ServerClient
from agentbolt.client.otlp_encode import encode_request
from agentbolt.client.tracing import SpanBuffer, attempt_scope, current_attempt

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


def _ended_spans(buffer: SpanBuffer) -> None:
    otel = MemoryTracing()
    otel.provider.add_span_processor(buffer)
    tracer = otel.tracer()
    with in_attempt("ro-mine", "at-1"), tracer.start_as_current_span("mine"):
        pass
    with in_attempt("ro-other-server", "at-2"), tracer.start_as_current_span("other"):
        pass
    with tracer.start_as_current_span("unattributed"):
        pass


def test_the_buffer_keeps_only_its_own_rollouts_and_counts_unattributed_spans() -> None:
    buffer = SpanBuffer()
    buffer.rollouts.add("ro-mine")
    _ended_spans(buffer)
    spans, upto = buffer.take()
    assert [s.name for s in spans] == ["mine"]
    assert (upto, buffer.unattributed) == (1, 1)
    assert buffer.take() == ([], 1)


class _Server:
    """Stands in for ``/v1/traces``: records each request's spans by name, answers ``status``."""

    def __init__(self, status: int = 200, refuse_attempt: str | None = None) -> None:
        self.status = status
        self.refuse_attempt = refuse_attempt
        self.requests: list[list[str]] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        body = ExportTraceServiceRequest.FromString(request.content)
        spans = [s for rs in body.resource_spans for ss in rs.scope_spans for s in ss.spans]
        self.requests.append([s.name for s in spans])
        attempts = {a.value.string_value for s in spans for a in s.attributes if a.key == semconv.ATTEMPT_ID}
        if self.refuse_attempt in attempts:
            return httpx.Response(404, json={"error": {"message": "unknown attempt", "code": "not_found"}})
        return httpx.Response(self.status, json={})


def _send(server: _Server, rollouts: list[str]) -> tuple[bool, SpanSender]:
    buffer = SpanBuffer()
    buffer.rollouts.update(rollouts)
    _ended_spans(buffer)

    async def scenario() -> tuple[bool, SpanSender]:
        transport = httpx.MockTransport(server.handle)
        async with ServerClient("http://server", retry=NO_RETRY, transport=transport) as client:
            sender = SpanSender(buffer, client)
            return await asyncio.gather(sender.flush(), sender.flush()), sender  # type: ignore[return-value]

    (first, second), sender = asyncio.run(scenario())
    assert first == second
    return first, sender


def test_attempts_flushed_together_share_one_request() -> None:
    server = _Server()
    stored, sender = _send(server, ["ro-mine", "ro-other-server"])
    assert stored
    assert server.requests == [["mine", "other"]]
    assert (sender.requests, sender.failed_spans) == (1, 0)


def test_a_refused_request_is_sent_again_attempt_by_attempt_and_only_the_bad_one_is_lost() -> None:
    server = _Server(refuse_attempt="at-2")
    stored, sender = _send(server, ["ro-mine", "ro-other-server"])
    assert not stored
    assert server.requests == [["mine", "other"], ["mine"], ["other"]]
    assert sender.failed_spans == 1


def test_nothing_to_send_is_not_a_request() -> None:
    server = _Server()
    stored, _ = _send(server, [])
    assert stored
    assert server.requests == []


def test_spans_are_encoded_exactly_as_the_otel_exporter_encodes_them() -> None:
    otel = MemoryTracing()
    tracer = otel.tracer()
    other_scope = otel.provider.get_tracer("instrumentation", "2.0")
    attributes = {"s": "x", "i": -5, "f": 1.5, "b": True, "ints": [1, 2], "strs": ["a", "b"]}
    with in_attempt("ro-1", "at-1"), tracer.start_as_current_span("root", attributes=attributes) as root:
        root.add_event("event", {"k": "v"})
        root.record_exception(ValueError("boom"))
        root.set_status(Status(StatusCode.ERROR, "bad"))
        with other_scope.start_as_current_span("child", links=[Link(root.get_span_context(), {"n": 1})]) as child:
            child.set_status(Status(StatusCode.OK))
    spans = otel.spans()
    assert ExportTraceServiceRequest.FromString(encode_request(spans)) == encode_spans(spans)
