"""The rollout queue: tasks, rollouts, attempts, their statuses, rewards, workers, model versions and queries.

Timestamps are seconds since the epoch (float).
"""

from __future__ import annotations

from collections import Counter
from enum import Enum
from typing import Annotated, Generic, Literal, TypeVar

from pydantic import Field, field_validator, model_validator

from agentbolt.types.base import FiniteFloat, FiniteJSON, JSONValue, QueryOffset, RolloutMode, StoreInt, _Model
from agentbolt.types.openai import ErrorObject
from agentbolt.types.spans import Span

# The most items one batch call of a worker carries (``/api/dequeue/batch``, ``/api/attempts/...``).
MAX_BATCH = 1_000


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


# A dead worker's attempts are requeued this long after its last heartbeat (workers beat 4x as often).
DEFAULT_HEARTBEAT_TIMEOUT_S = 15.0

RetryableStatus = Literal["failed", "timeout", "unresponsive"]
_DEFAULT_RETRY_ON: tuple[RetryableStatus, ...] = ("timeout", "unresponsive")


class RolloutConfig(_Model):
    """How a rollout's attempts are run and retried."""

    timeout_s: FiniteFloat | None = Field(
        default=None, gt=0, description="Wall-clock limit of one attempt; None means no limit."
    )
    heartbeat_timeout_s: FiniteFloat | None = Field(
        default=DEFAULT_HEARTBEAT_TIMEOUT_S,
        gt=0,
        description="An attempt with no heartbeat for this long is marked unresponsive; None disables.",
    )
    max_attempts: int = Field(
        default=1, strict=True, ge=1, le=100, description="Attempts allowed before the rollout fails."
    )
    retry_on: list[RetryableStatus] = Field(
        default_factory=lambda: list(_DEFAULT_RETRY_ON),
        description="Attempt outcomes that requeue the rollout while attempts remain.",
    )


class RolloutCreate(_Model):
    """A request to enqueue one rollout of a task."""

    input: FiniteJSON = Field(description="The task: any JSON value handed to the agent function.")
    mode: RolloutMode = "train"
    group_id: str | None = Field(
        default=None, max_length=200, description="Shared by rollouts of the same task (a GRPO group)."
    )
    model_version: StoreInt | None = Field(
        default=None, description="Model version the rollout should run on; None means latest."
    )
    config: RolloutConfig = Field(default_factory=RolloutConfig)
    metadata: dict[str, FiniteJSON] = Field(default_factory=dict)
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
    modes: list[RolloutMode] | None = Field(
        default=None,
        min_length=1,
        description="Only these modes; None means any. An empty list could match nothing, so it is refused.",
    )
    wait_s: FiniteFloat = Field(default=0.0, ge=0, le=60, description="Long-poll: wait this long for a rollout.")


class DequeueBatchRequest(_Model):
    """A worker's dequeue for several of its runners at once (``POST /api/dequeue/batch``)."""

    worker_ids: list[Annotated[str, Field(min_length=1, max_length=200)]] = Field(
        min_length=1,
        max_length=MAX_BATCH,
        description="The runners that want a rollout, each at most one; the oldest queued rollout goes to the first.",
    )
    modes: list[RolloutMode] | None = Field(
        default=None,
        min_length=1,
        description="Only these modes; None means any. An empty list could match nothing, so it is refused.",
    )
    wait_s: FiniteFloat = Field(
        default=0.0, ge=0, le=60, description="Long-poll: wait this long for at least one rollout."
    )

    @field_validator("worker_ids")
    @classmethod
    def _distinct(cls, worker_ids: list[str]) -> list[str]:
        repeated = sorted(w for w, n in Counter(worker_ids).items() if n > 1)
        if repeated:
            raise ValueError(f"worker id {', '.join(repeated)} appears more than once; a runner holds one attempt")
        return worker_ids


class HeartbeatRequest(_Model):
    worker_id: str | None = Field(default=None, max_length=200)


class AttemptHeartbeat(HeartbeatRequest):
    """One attempt's heartbeat in a batch (``POST /api/attempts/heartbeat``)."""

    rollout_id: str = Field(max_length=200)
    attempt_id: str = Field(max_length=200)


class AttemptFinish(_Model):
    """A worker's report that its attempt ended."""

    status: Literal["succeeded", "failed"]
    error: ErrorInfo | None = None
    reward: FiniteFloat | None = Field(default=None, description="Final reward, if the agent returned one.")


class AttemptFinishItem(AttemptFinish):
    """One attempt's finish in a batch (``POST /api/attempts/finish``)."""

    rollout_id: str = Field(max_length=200)
    attempt_id: str = Field(max_length=200)


class AttemptResult(_Model):
    """The outcome for one attempt of a batch call, in the order of the request's items.

    ``status_code`` is what the route for that one attempt would have answered: 200 (finish: with
    ``rollout``, the rollout after it), or the error's status (404, 409...) with ``error``.
    """

    rollout_id: str
    attempt_id: str
    status_code: int = Field(description="200, or the error's HTTP status.")
    rollout: Rollout | None = Field(default=None, description="A finish's rollout, once the attempt has ended.")
    error: ErrorObject | None = Field(default=None, description="What went wrong for this attempt, if anything.")


# The ``error.type`` of an attempt its worker released (``AttemptRelease``): a dotted name no exception has.
RELEASED_ERROR_TYPE = "agentbolt.released"


class AttemptRelease(_Model):
    """A worker's report that it gives an unfinished attempt back (it is shutting down).

    The attempt ends as ``failed`` with ``error.type`` :data:`RELEASED_ERROR_TYPE` and the rollout goes back
    to ``queuing`` at once, whatever its ``retry_on``; a released attempt does not count against
    ``max_attempts``.
    """

    worker_id: str | None = Field(default=None, max_length=200, description="The runner that dequeued it.")
    reason: str = Field(default="the worker shut down", max_length=2_000)


# Rewards, workers, model versions


class RewardCreate(_Model):
    """A reward reported outside the agent's own tracing (e.g. by a judge after the rollout)."""

    attempt_id: str | None = Field(default=None, description="Defaults to the rollout's latest attempt.")
    value: FiniteFloat | None = Field(default=None, description="Scalar reward; or give ``dimensions``.")
    dimensions: dict[str, FiniteFloat] = Field(default_factory=dict, description="Named reward dimensions.")
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

    version: StoreInt
    model: str = Field(min_length=1, max_length=500, description="Model name the gateway serves it as.")
    checkpoint: str | None = Field(default=None, description="Where the weights are (path or URI).")
    metadata: dict[str, FiniteJSON] = Field(default_factory=dict)


class ModelVersion(ModelVersionCreate):
    created_at: float


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
    offset: QueryOffset = 0
    with_attempts: bool = False


class WaitRequest(_Model):
    rollout_ids: list[str] = Field(min_length=1, max_length=10_000)
    timeout_s: FiniteFloat = Field(default=30.0, ge=0, le=600)


class WaitResult(_Model):
    finished: list[Rollout]
    pending: list[str]


class RolloutsRead(_Model):
    """Rollouts to read back whole (``POST /api/rollouts/read``): the trainer's read of one step's rollouts."""

    rollout_ids: list[str] = Field(min_length=1, max_length=10_000)


class RolloutWithSpans(Rollout):
    """A rollout with its attempts and every stored span: what the trainer and ``agentbolt export`` read."""

    spans: list[Span] = Field(default_factory=list, description="In sequence order, rollout-level spans first.")


class Health(_Model):
    status: Literal["ok"] = "ok"
    version: str
    store: str
    schema_version: int
