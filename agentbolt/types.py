"""Every type that crosses a process boundary or lands on disk, in one place.

The words follow DESIGN.md: a *task* is one dataset input; a *rollout* is one execution of the
agent on a task (rollouts of the same task share a ``group_id``); an *attempt* is one try of a
rollout; a *span* is one OpenTelemetry span stored with its rollout id, attempt id and a
per-attempt sequence number.

Timestamps are seconds since the epoch (float) for queue records and nanoseconds since the
epoch (int) for spans, as OpenTelemetry has them.
"""

from __future__ import annotations

from enum import Enum
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

JSONValue = Any
"""Any JSON-serialisable value (a task's input, an attribute value)."""

RolloutMode = Literal["train", "val", "test"]


class RolloutStatus(str, Enum):
    """Where a rollout is in its life. Legal moves are in :mod:`agentbolt.lifecycle`."""

    QUEUING = "queuing"  # waiting for a worker (new, or requeued for another attempt)
    RUNNING = "running"  # an attempt holds it
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # the last allowed attempt failed
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (RolloutStatus.SUCCEEDED, RolloutStatus.FAILED, RolloutStatus.CANCELLED)


class AttemptStatus(str, Enum):
    """Where an attempt is in its life. Legal moves are in :mod:`agentbolt.lifecycle`."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # the agent raised, or the worker reported failure
    TIMEOUT = "timeout"  # ran longer than the rollout's ``timeout_s``
    UNRESPONSIVE = "unresponsive"  # no heartbeat within ``heartbeat_timeout_s`` (worker died)
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self is not AttemptStatus.RUNNING


RetryableStatus = Literal["failed", "timeout", "unresponsive"]
_DEFAULT_RETRY_ON: tuple[RetryableStatus, ...] = ("timeout", "unresponsive")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RolloutConfig(_Model):
    """How a rollout's attempts are run and retried."""

    timeout_s: float | None = Field(
        default=None, gt=0, description="Wall-clock limit of one attempt; None means no limit."
    )
    heartbeat_timeout_s: float | None = Field(
        default=60.0,
        gt=0,
        description="An attempt with no heartbeat for this long is marked unresponsive; None disables.",
    )
    max_attempts: int = Field(default=1, ge=1, le=100, description="Attempts allowed before the rollout fails.")
    retry_on: list[RetryableStatus] = Field(
        default_factory=lambda: list(_DEFAULT_RETRY_ON),
        description="Attempt outcomes that requeue the rollout while attempts remain.",
    )


class RolloutCreate(_Model):
    """A request to enqueue one rollout of a task."""

    input: JSONValue = Field(description="The task: any JSON value handed to the agent function.")
    mode: RolloutMode = "train"
    group_id: str | None = Field(
        default=None, max_length=200, description="Shared by rollouts of the same task (a GRPO group)."
    )
    model_version: int | None = Field(
        default=None, ge=0, description="Model version the rollout should run on; None means latest."
    )
    config: RolloutConfig = Field(default_factory=RolloutConfig)
    metadata: dict[str, JSONValue] = Field(default_factory=dict)
    rollout_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        pattern=r"^[A-Za-z0-9._:-]+$",
        description="Optional caller-chosen id; generated when absent.",
    )


class ErrorInfo(_Model):
    """What went wrong in an attempt, as the worker saw it."""

    type: str = Field(max_length=500)
    message: str = Field(default="", max_length=20_000)
    traceback: str | None = Field(default=None, max_length=200_000)


class Attempt(_Model):
    attempt_id: str
    rollout_id: str
    number: int = Field(description="1 for the first try, 2 for the first retry, ...")
    worker_id: str | None = None
    status: AttemptStatus = AttemptStatus.RUNNING
    started_at: float
    ended_at: float | None = None
    last_heartbeat_at: float
    error: ErrorInfo | None = None


class Rollout(_Model):
    rollout_id: str
    input: JSONValue
    mode: RolloutMode
    group_id: str | None = None
    model_version: int | None = None
    config: RolloutConfig
    metadata: dict[str, JSONValue] = Field(default_factory=dict)
    status: RolloutStatus
    created_at: float
    finished_at: float | None = None
    num_attempts: int = 0
    reward: float | None = Field(default=None, description="Final (primary) reward, when one was reported.")
    attempts: list[Attempt] | None = Field(
        default=None, description="Filled by queries that ask for attempts; None otherwise."
    )


class Claim(_Model):
    """What a worker receives from a dequeue: the rollout and the attempt it now owns."""

    rollout: Rollout
    attempt: Attempt


class DequeueRequest(_Model):
    worker_id: str = Field(min_length=1, max_length=200)
    modes: list[RolloutMode] | None = Field(default=None, description="Only these modes; None means any.")
    wait_s: float = Field(default=0.0, ge=0, le=60, description="Long-poll: wait this long for a rollout.")


class HeartbeatRequest(_Model):
    worker_id: str | None = Field(default=None, max_length=200)


class AttemptFinish(_Model):
    """A worker's report that its attempt ended."""

    status: Literal["succeeded", "failed"]
    error: ErrorInfo | None = None
    reward: float | None = Field(default=None, description="Final reward, if the agent returned one.")

    @field_validator("reward")
    @classmethod
    def _finite(cls, v: float | None) -> float | None:
        if v is not None and v != v:  # NaN
            raise ValueError("reward must be a finite number")
        return v


# ---------------------------------------------------------------------------------------------
# Spans


class SpanStatusCode(str, Enum):
    UNSET = "UNSET"
    OK = "OK"
    ERROR = "ERROR"


class SpanStatus(_Model):
    code: SpanStatusCode = SpanStatusCode.UNSET
    message: str = ""


class SpanEvent(_Model):
    name: str
    time_ns: int = Field(ge=0)
    attributes: dict[str, JSONValue] = Field(default_factory=dict)


class SpanLink(_Model):
    trace_id: str
    span_id: str
    attributes: dict[str, JSONValue] = Field(default_factory=dict)


SpanKind = Literal["INTERNAL", "SERVER", "CLIENT", "PRODUCER", "CONSUMER", "UNSPECIFIED"]

_HEX32 = r"^[0-9a-f]{32}$"
_HEX16 = r"^[0-9a-f]{16}$"


class SpanIn(_Model):
    """A span as received (OTLP, gateway, reward API), before the store numbers it."""

    rollout_id: str | None = Field(default=None, description="None only for unattributed gateway calls.")
    attempt_id: str | None = None
    trace_id: str = Field(pattern=_HEX32, description="32 lowercase hex characters.")
    span_id: str = Field(pattern=_HEX16, description="16 lowercase hex characters.")
    parent_id: str | None = Field(default=None, pattern=_HEX16)
    name: str = Field(max_length=1000)
    kind: SpanKind = "INTERNAL"
    start_time_ns: int = Field(ge=0)
    end_time_ns: int = Field(ge=0)
    attributes: dict[str, JSONValue] = Field(default_factory=dict)
    events: list[SpanEvent] = Field(default_factory=list)
    links: list[SpanLink] = Field(default_factory=list)
    status: SpanStatus = Field(default_factory=SpanStatus)
    resource: dict[str, JSONValue] = Field(default_factory=dict)
    scope: str | None = Field(default=None, description="Instrumentation scope name.")

    @model_validator(mode="after")
    def _attempt_needs_rollout(self) -> SpanIn:
        if self.attempt_id is not None and self.rollout_id is None:
            raise ValueError("a span with an attempt_id must also carry a rollout_id")
        return self


class Span(SpanIn):
    """A stored span. ``sequence_id`` orders the spans of one attempt by arrival at the store."""

    sequence_id: int


class AddSpansResult(_Model):
    inserted: int
    duplicates: int = Field(description="Spans already stored (same trace id and span id); kept once.")


# ---------------------------------------------------------------------------------------------
# Rewards, workers, model versions


class RewardCreate(_Model):
    """A reward reported outside the agent's own tracing (e.g. by a judge after the rollout)."""

    attempt_id: str | None = Field(default=None, description="Defaults to the rollout's latest attempt.")
    value: float | None = Field(default=None, description="Scalar reward; or give ``dimensions``.")
    dimensions: dict[str, float] = Field(default_factory=dict, description="Named reward dimensions.")
    primary: str | None = Field(default=None, description="Which dimension is the primary reward.")
    final: bool = Field(default=True, description="Whether this is the episode's final reward.")

    @model_validator(mode="after")
    def _one_value(self) -> RewardCreate:
        if self.value is None and not self.dimensions:
            raise ValueError("give a value or at least one dimension")
        if self.primary is not None and self.primary not in self.dimensions:
            raise ValueError(f"primary {self.primary!r} is not one of the dimensions")
        if self.value is None and self.primary is None and len(self.dimensions) > 1:
            raise ValueError("several dimensions need a primary (or a value)")
        return self

    def primary_value(self) -> float:
        """The scalar that stands for this reward: ``value``, else the primary (or only) dimension."""
        if self.value is not None:
            return self.value
        name = self.primary or next(iter(self.dimensions))
        return self.dimensions[name]


class Worker(_Model):
    worker_id: str
    first_seen_at: float
    last_seen_at: float
    current_attempt_id: str | None = None
    attempts_done: int = 0


class ModelVersionCreate(_Model):
    """A record that the engine serves new weights (written by the trainer after each update)."""

    version: int = Field(ge=0)
    model: str = Field(min_length=1, max_length=500, description="Model name the gateway serves it as.")
    checkpoint: str | None = Field(default=None, description="Where the weights are (path or URI).")
    metadata: dict[str, JSONValue] = Field(default_factory=dict)


class ModelVersion(ModelVersionCreate):
    created_at: float


# ---------------------------------------------------------------------------------------------
# Queries

T = TypeVar("T")


class Page(_Model, Generic[T]):
    items: list[T]
    total: int
    limit: int
    offset: int


class RolloutQuery(_Model):
    status: list[RolloutStatus] | None = None
    mode: RolloutMode | None = None
    group_id: str | None = None
    rollout_ids: list[str] | None = None
    limit: int = Field(default=100, ge=1, le=10_000)
    offset: int = Field(default=0, ge=0)
    with_attempts: bool = False


class WaitRequest(_Model):
    rollout_ids: list[str] = Field(min_length=1, max_length=10_000)
    timeout_s: float = Field(default=30.0, ge=0, le=600)


class WaitResult(_Model):
    finished: list[Rollout]
    pending: list[str]


class Health(_Model):
    status: Literal["ok"] = "ok"
    version: str
    store: str
    schema_version: int


# ---------------------------------------------------------------------------------------------
# Configuration


class ServerConfig(_Model):
    """Settings of the Lightning Server (``agentbolt serve``)."""

    host: str = Field(default="127.0.0.1", description="Interface to bind; non-loopback needs an API key.")
    port: int = Field(default=8420, ge=0, le=65535)
    store_url: str = Field(
        default="sqlite+aiosqlite:///agentbolt.db",
        description="sqlite+aiosqlite:///PATH or postgresql+asyncpg://USER@HOST:PORT/DB",
    )
    api_key: str | None = Field(default=None, repr=False, description="Required on every request but /health.")
    max_body_bytes: int = Field(default=32 * 1024 * 1024, ge=1024, description="Largest request body accepted.")
    watchdog_interval_s: float = Field(default=1.0, gt=0, description="How often timed-out attempts are swept.")


class LLM(_Model):
    """What an agent function gets to reach the policy model: use it with any OpenAI-compatible client.

    ``base_url`` routes through the server's gateway with the attempt in the path, so every call is
    attributed to the rollout with no other change to the agent.
    """

    base_url: str
    model: str
    api_key: str = Field(repr=False)


# ---------------------------------------------------------------------------------------------
# Embedded inference engine (agentbolt/engine): one generation request and its result


class GenerationRequest(_Model):
    """One completion asked of the engine: prompt token ids in, sampled token ids out.

    ``temperature == 0`` means greedy decoding. Generation stops at the model's end-of-turn token(s),
    at any of ``stop_token_ids`` (the stop token is kept as the last response token, so the trainer
    sees the model choosing to stop), or after ``max_new_tokens``.
    """

    prompt_token_ids: list[int] = Field(min_length=1)
    max_new_tokens: int = Field(default=256, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=100.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stop_token_ids: list[int] = Field(default_factory=list)
    seed: int | None = Field(default=None, description="Same seed, prompt and weights: same tokens.")
    top_logprobs: int = Field(default=0, ge=0, le=20, description="Alternatives reported per position.")


class TokenLogprob(_Model):
    token_id: int
    logprob: float


class GenerationTimings(_Model):
    queued_s: float = Field(description="From submission until its batch started.")
    generation_s: float = Field(description="From its batch starting until its last token.")
    batch_size: int = Field(description="Sequences decoded together in its batch.")


class GenerationResult(_Model):
    """What the engine sampled, with what the RL trainer needs to use it.

    ``logprobs[i]`` is the log-probability of ``response_token_ids[i]`` under the sampling
    distribution before top-p truncation: ``log_softmax(logits / temperature)``, or
    ``log_softmax(logits)`` when greedy. ``model_version`` is the weights version it ran on.
    """

    response_token_ids: list[int]
    logprobs: list[float]
    top_logprobs: list[list[TokenLogprob]] | None = None
    finish_reason: Literal["stop", "length"]
    model_version: int
    timings: GenerationTimings
    token_source: Literal["engine", "retokenized"] = Field(
        default="engine", description="engine: ids came from the engine; retokenized: from tokenizing its text."
    )
    token_drift: int | None = Field(
        default=None, description="When retokenized: |len(ids) - tokens the engine reported|, if it reported any."
    )
