"""The rollout queue API under ``/api``: enqueue, dequeue (long-poll), heartbeat, finish, query.

Every handler awaits the store's commit before it returns, so a 2xx means the change is durable.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Sequence
from typing import Annotated, Any, Protocol

from fastapi import APIRouter, Body, Query, Request, Response
from pydantic import BaseModel

from agentbolt import semconv
from agentbolt.errors import AgentboltError, BadInput, NotFound, error_body_of
from agentbolt.store import Store
from agentbolt.types import (
    AddSpansResult,
    Attempt,
    AttemptFinish,
    Claim,
    DequeueRequest,
    HeartbeatRequest,
    ModelVersion,
    ModelVersionCreate,
    Page,
    QueryOffset,
    RewardCreate,
    Rollout,
    RolloutCreate,
    RolloutMode,
    RolloutQuery,
    RolloutsRead,
    RolloutStatus,
    RolloutWithSpans,
    Span,
    SpanIn,
    WaitRequest,
    WaitResult,
    Worker,
)
from agentbolt.types.openai import ErrorObject, ErrorResponse
from agentbolt.types.queue import (
    MAX_BATCH,
    AttemptFinishItem,
    AttemptHeartbeat,
    AttemptRelease,
    AttemptResult,
    DequeueBatchRequest,
)

router = APIRouter(prefix="/api", tags=["queue"])

_ERROR_DESCRIPTIONS = {
    400: "Invalid input; `param` names the field.",
    404: "No rollout (or attempt) with that id.",
    409: "The change clashes with stored state: an id that exists already, or a move the lifecycle forbids.",
}


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` of the errors a route answers, each with the one error body."""
    return {status: {"model": ErrorResponse, "description": _ERROR_DESCRIPTIONS[status]} for status in statuses}


# Workers in other server processes (PostgreSQL) cannot signal us, so long-polls also re-check this often.
_POLL_S = 0.5


class QueueSignals:
    """Wakes long-polling dequeues in this process when rollouts are (re)queued."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def wake(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self, timeout_s: float) -> None:
        try:
            await asyncio.wait_for(self._event.wait(), timeout_s)
        except asyncio.TimeoutError:
            pass


class AttemptFinishHook(Protocol):
    """What another component runs around the end of an attempt (the gateway registers one).

    ``create_app`` registers the hooks; the finish route awaits every hook's :meth:`before_finish`, ends
    the attempt in the store, then awaits every :meth:`after_finish`. A finish the store refuses (unknown
    attempt, already finished) runs no ``after_finish``.
    """

    async def before_finish(self, rollout_id: str, attempt_id: str) -> None:
        """Before the attempt ends (e.g. store its pending spans, so a finished rollout's spans are all there)."""
        ...

    async def after_finish(self, rollout_id: str, attempt_id: str) -> None:
        """Once the attempt has ended (e.g. refuse its later calls)."""
        ...


def _store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


def _json(model: BaseModel, status_code: int = 200) -> Response:
    """Serialise a model straight to a response (hot routes skip FastAPI's re-validation of the result)."""
    return Response(model.model_dump_json(), status_code=status_code, media_type="application/json")


def _json_list(models: Sequence[BaseModel]) -> Response:
    """A JSON array of models, serialised as :func:`_json` does."""
    return Response("[" + ",".join(m.model_dump_json() for m in models) + "]", media_type="application/json")


def _signals(request: Request) -> QueueSignals:
    signals: QueueSignals = request.app.state.signals
    return signals


def _finish_hooks(request: Request) -> Sequence[AttemptFinishHook]:
    hooks: Sequence[AttemptFinishHook] = request.app.state.attempt_finish_hooks
    return hooks


@router.post("/rollouts", response_model=Rollout, status_code=201, responses=_errors(400, 409))
async def enqueue_rollout(request: Request, body: RolloutCreate) -> Rollout:
    """Enqueue one rollout of a task."""
    [rollout] = await _store(request).enqueue([body])
    _signals(request).wake()
    return rollout


@router.post("/rollouts/batch", response_model=list[Rollout], status_code=201, responses=_errors(400, 409))
async def enqueue_rollouts(
    request: Request, body: Annotated[list[RolloutCreate], Body(max_length=10_000)]
) -> list[Rollout]:
    """Enqueue many rollouts in one transaction (all or none)."""
    if not body:
        raise BadInput("the batch is empty: send a JSON array of at least one rollout")
    rollouts = await _store(request).enqueue(body)
    _signals(request).wake()
    return rollouts


@router.get("/rollouts", response_model=Page[Rollout], responses=_errors(400))
async def list_rollouts(
    request: Request,
    status: Annotated[list[RolloutStatus] | None, Query()] = None,
    mode: RolloutMode | None = None,
    group_id: str | None = None,
    rollout_id: Annotated[list[str] | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
    offset: Annotated[QueryOffset, Query()] = 0,
    with_attempts: bool = False,
) -> Page[Rollout]:
    """Query rollouts, oldest first, with filters and pagination."""
    query = RolloutQuery(
        status=status,
        mode=mode,
        group_id=group_id,
        rollout_ids=rollout_id,
        limit=limit,
        offset=offset,
        with_attempts=with_attempts,
    )
    return await _store(request).query_rollouts(query)


@router.get("/rollouts/{rollout_id}", response_model=Rollout, responses=_errors(404))
async def get_rollout(request: Request, rollout_id: str) -> Rollout:
    """One rollout with its attempts."""
    return await _store(request).get_rollout(rollout_id, with_attempts=True)


@router.post("/rollouts/{rollout_id}/cancel", response_model=Rollout, responses=_errors(404, 409))
async def cancel_rollout(request: Request, rollout_id: str) -> Rollout:
    """Cancel a queuing or running rollout."""
    return await _store(request).cancel(rollout_id)


@router.post("/rollouts/read", response_model=list[RolloutWithSpans], responses=_errors(400, 404))
async def read_rollouts(request: Request, body: RolloutsRead) -> Response:
    """Rollouts with their attempts and every stored span, in the order given, in one read.

    For reading a batch of finished rollouts back whole (the trainer's step, ``agentbolt export``);
    404 naming every unknown id, and then nothing is returned.
    """
    found = await _store(request).read_rollouts(body.rollout_ids)
    body_json = "[" + ",".join(r.model_dump_json() for r in found) + "]"
    return Response(body_json, media_type="application/json")


@router.post("/rollouts/wait", response_model=WaitResult, responses=_errors(400, 404))
async def wait_rollouts(request: Request, body: WaitRequest) -> WaitResult:
    """Wait until the given rollouts are finished, or the timeout passes."""
    return await _store(request).wait_for_rollouts(body.rollout_ids, body.timeout_s)


@router.post(
    "/dequeue",
    response_model=Claim,
    responses={204: {"description": "No rollout was queued within wait_s."}, **_errors(400)},
)
async def dequeue(request: Request, body: DequeueRequest) -> Response:
    """Claim the oldest queued rollout: a new attempt is created and owned by ``worker_id``.

    With ``wait_s`` > 0 the call long-polls until a rollout is queued or the wait ends (204).
    """
    claims = await _claim(request, [body.worker_id], body.modes, body.wait_s)
    return _json(claims[0]) if claims else Response(status_code=204)


@router.post("/dequeue/batch", response_model=list[Claim], responses=_errors(400))
async def dequeue_batch(request: Request, body: DequeueBatchRequest) -> Response:
    """Claim rollouts for several runners of a worker in one call: the oldest queued rollouts, at most one for
    each of ``worker_ids`` (the oldest for the first), each with a new attempt owned by its runner.

    Answers as soon as at least one rollout is claimed, with as many as were queued (up to one a runner); with
    ``wait_s`` > 0 it long-polls until then, or answers ``[]`` when the wait ends.
    """
    return _json_list(await _claim(request, body.worker_ids, body.modes, body.wait_s))


async def _claim(
    request: Request, worker_ids: list[str], modes: list[RolloutMode] | None, wait_s: float
) -> list[Claim]:
    """Claim rollouts for ``worker_ids``, long-polling up to ``wait_s`` until there is at least one."""
    store, signals = _store(request), _signals(request)
    deadline = time.monotonic() + wait_s
    while True:
        claims = await store.dequeue_many(worker_ids, modes)
        remaining = deadline - time.monotonic()
        if claims or remaining <= 0:
            return claims
        await signals.wait(min(remaining, _POLL_S))


@router.post(
    "/rollouts/{rollout_id}/attempts/{attempt_id}/heartbeat", status_code=204, responses=_errors(400, 404, 409)
)
async def heartbeat(
    request: Request, rollout_id: str, attempt_id: str, body: HeartbeatRequest | None = None
) -> Response:
    """Tell the server the attempt's worker is alive (else the watchdog marks it unresponsive)."""
    await _store(request).heartbeat(rollout_id, attempt_id, body.worker_id if body else None)
    return Response(status_code=204)


@router.post("/attempts/heartbeat", response_model=list[AttemptResult], responses=_errors(400))
async def heartbeat_batch(
    request: Request, body: Annotated[list[AttemptHeartbeat], Body(max_length=MAX_BATCH)]
) -> Response:
    """The heartbeats of several attempts in one call (a worker's running attempts).

    Answers one result per heartbeat, in order: ``status_code`` 200, or the error the heartbeat route would
    have answered for that attempt (404 unknown, 409 ended or another worker's), which changes nothing.
    """
    if not body:
        raise BadInput("the batch is empty: send a JSON array of at least one heartbeat")
    outcomes = await _store(request).heartbeats(body)
    return _json_list([_result(beat.rollout_id, beat.attempt_id, o) for beat, o in zip(body, outcomes, strict=True)])


@router.post(
    "/rollouts/{rollout_id}/attempts/{attempt_id}/finish", response_model=Rollout, responses=_errors(400, 404, 409)
)
async def finish_attempt(request: Request, rollout_id: str, attempt_id: str, body: AttemptFinish) -> Response:
    """End an attempt as succeeded or failed (with error details); the rollout moves on per its config.

    The attempt-finish hooks run around it (:class:`AttemptFinishHook`): with the gateway, the attempt's
    LLM-call spans still waiting for their batched write are stored first, so a finished rollout's spans
    are all there, and the attempt's later LLM calls are refused after.

    Idempotent, so a worker may retry it after a lost response: repeating the finish that ended the attempt
    (same status and error) answers 200 with the rollout; 409 if the attempt had ended otherwise.
    """
    item = AttemptFinishItem(rollout_id=rollout_id, attempt_id=attempt_id, **dict(body))
    [outcome] = await _finish(request, [item])
    if isinstance(outcome, AgentboltError):
        raise outcome
    return _json(outcome)


@router.post("/attempts/finish", response_model=list[AttemptResult], responses=_errors(400))
async def finish_batch(
    request: Request, body: Annotated[list[AttemptFinishItem], Body(max_length=MAX_BATCH)]
) -> Response:
    """End several attempts in one call (a worker's attempts that ended meanwhile), each as the finish route
    would, with its hooks; stored in one transaction.

    Answers one result per finish, in order: ``status_code`` 200 with the ``rollout``, or the error the finish
    route would have answered for that attempt (404, 409), which changes nothing. Idempotent like that route.
    """
    if not body:
        raise BadInput("the batch is empty: send a JSON array of at least one finish")
    outcomes = await _finish(request, body)
    return _json_list([_result(f.rollout_id, f.attempt_id, o) for f, o in zip(body, outcomes, strict=True)])


async def _finish(request: Request, finishes: list[AttemptFinishItem]) -> list[Rollout | AgentboltError]:
    """End the attempts in the store with the finish hooks around them; wakes dequeues for requeued rollouts."""
    hooks = _finish_hooks(request)
    for hook in hooks:
        for finish in finishes:
            await hook.before_finish(finish.rollout_id, finish.attempt_id)
    outcomes = await _store(request).finish_attempts(finishes)
    ended = [(f, o) for f, o in zip(finishes, outcomes, strict=True) if isinstance(o, Rollout)]
    for hook in hooks:
        for finish, _ in ended:
            await hook.after_finish(finish.rollout_id, finish.attempt_id)
    if any(rollout.status is RolloutStatus.QUEUING for _, rollout in ended):
        _signals(request).wake()
    return outcomes


def _result(rollout_id: str, attempt_id: str, outcome: Rollout | Attempt | AgentboltError) -> AttemptResult:
    """One attempt's entry in a batch answer."""
    if isinstance(outcome, AgentboltError):
        error = ErrorObject(**error_body_of(outcome)["error"])
        return AttemptResult(rollout_id=rollout_id, attempt_id=attempt_id, status_code=outcome.http_status, error=error)
    rollout = outcome if isinstance(outcome, Rollout) else None
    return AttemptResult(rollout_id=rollout_id, attempt_id=attempt_id, status_code=200, rollout=rollout)


@router.post(
    "/rollouts/{rollout_id}/attempts/{attempt_id}/release", response_model=Rollout, responses=_errors(400, 404, 409)
)
async def release_attempt(
    request: Request, rollout_id: str, attempt_id: str, body: AttemptRelease | None = None
) -> Response:
    """Give a running attempt back unfinished (its worker is shutting down); the rollout is requeued at once.

    The attempt ends as ``failed`` with ``error.type`` ``agentbolt.released``; the rollout goes back to
    ``queuing`` whatever its ``retry_on``, and the released attempt is not counted against ``max_attempts``.
    The attempt-finish hooks run around it as for a finish. Repeating a release answers 200 again; 409 if the
    attempt had already ended otherwise.
    """
    hooks = _finish_hooks(request)
    for hook in hooks:
        await hook.before_finish(rollout_id, attempt_id)
    rollout = await _store(request).release_attempt(rollout_id, attempt_id, body or AttemptRelease())
    for hook in hooks:
        await hook.after_finish(rollout_id, attempt_id)
    _signals(request).wake()
    return _json(rollout)


@router.get("/rollouts/{rollout_id}/spans", response_model=Page[Span], responses=_errors(400, 404))
async def list_spans(
    request: Request,
    rollout_id: str,
    attempt_id: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    offset: Annotated[QueryOffset, Query()] = 0,
) -> Page[Span]:
    """A rollout's spans, ordered by attempt and sequence id."""
    store = _store(request)
    await store.get_rollout(rollout_id, with_attempts=False)  # 404 for an unknown rollout
    return await store.query_spans(rollout_id, attempt_id, limit=limit, offset=offset)


@router.post(
    "/rollouts/{rollout_id}/rewards", response_model=AddSpansResult, status_code=201, responses=_errors(400, 404)
)
async def add_reward(request: Request, rollout_id: str, body: RewardCreate) -> AddSpansResult:
    """Record a reward from outside the agent (e.g. a judge), stored as a reward span.

    Without ``attempt_id`` it goes to the rollout's latest attempt. A final reward (the default)
    also becomes the rollout's ``reward``.
    """
    store = _store(request)
    attempt_id = body.attempt_id
    if attempt_id is None:
        rollout = await store.get_rollout(rollout_id, with_attempts=True)
        if not rollout.attempts:
            raise BadInput(f"rollout {rollout_id} has no attempt yet; a reward needs one")
        attempt_id = rollout.attempts[-1].attempt_id
    now = time.time_ns()
    attributes: dict[str, object] = {
        semconv.REWARD_VALUE: body.primary_value(),
        semconv.REWARD_FINAL: body.final,
    }
    if body.dimensions:
        attributes[semconv.REWARD_DIMENSIONS] = json.dumps(body.dimensions)
    if body.primary:
        attributes[semconv.REWARD_PRIMARY] = body.primary
    span = SpanIn(
        rollout_id=rollout_id,
        attempt_id=attempt_id,
        trace_id=secrets.token_hex(16),
        span_id=secrets.token_hex(8),
        name=semconv.SPAN_REWARD,
        start_time_ns=now,
        end_time_ns=now,
        attributes=attributes,
    )
    return await store.add_reward(span, body.primary_value() if body.final else None)


@router.get("/workers", response_model=list[Worker])
async def list_workers(request: Request) -> list[Worker]:
    """Workers seen by this store, with what each is running."""
    return await _store(request).list_workers()


@router.post(
    "/model-versions", response_model=ModelVersion, status_code=201, tags=["model"], responses=_errors(400, 409)
)
async def add_model_version(request: Request, body: ModelVersionCreate) -> ModelVersion:
    """Record that the engine now serves new weights (the trainer calls this after each update)."""
    return await _store(request).add_model_version(body)


@router.get("/model-versions/latest", response_model=ModelVersion, tags=["model"], responses=_errors(404))
async def latest_model_version(request: Request) -> ModelVersion:
    """The newest model version record."""
    latest = await _store(request).latest_model_version()
    if latest is None:
        raise NotFound("no model version has been recorded yet")
    return latest
