"""A private OTel pipeline for unit tests of the client's signal helpers: spans land in memory."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from agentbolt.client.tracing import AttemptContext, AttemptSpanProcessor, attempt_scope
from agentbolt.types import Attempt, Rollout, RolloutConfig, RolloutStatus


class MemoryTracing:
    """A TracerProvider of its own (never the global one) with the attempt stamper and an in-memory sink."""

    def __init__(self) -> None:
        self.provider = TracerProvider()
        self.provider.add_span_processor(AttemptSpanProcessor())
        self.sink = InMemorySpanExporter()
        self.provider.add_span_processor(SimpleSpanProcessor(self.sink))

    def tracer(self):  # type: ignore[no-untyped-def]
        return self.provider.get_tracer("test")

    def spans(self) -> list[ReadableSpan]:
        return list(self.sink.get_finished_spans())

    def one(self, name: str) -> ReadableSpan:
        found = [s for s in self.spans() if s.name == name]
        assert len(found) == 1, [s.name for s in self.spans()]
        return found[0]


def attempt_context(rollout_id: str = "ro-1", attempt_id: str = "at-1") -> AttemptContext:
    rollout = Rollout(
        rollout_id=rollout_id, input={}, mode="train", config=RolloutConfig(), status=RolloutStatus.RUNNING,
        created_at=0.0,
    )  # fmt: skip
    attempt = Attempt(attempt_id=attempt_id, rollout_id=rollout_id, number=1, started_at=0.0, last_heartbeat_at=0.0)
    return AttemptContext(rollout=rollout, attempt=attempt)


@contextmanager
def in_attempt(rollout_id: str = "ro-1", attempt_id: str = "at-1") -> Iterator[AttemptContext]:
    with attempt_scope(attempt_context(rollout_id, attempt_id)) as ctx:
        yield ctx
