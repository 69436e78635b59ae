"""``ServerClient``: the typed HTTP client of the Lightning Server's queue API.

Errors come back as the same exception classes the server raised (BadInput, NotFound,
IllegalTransition, ...), carrying the server's message.

Idempotent calls (every read, heartbeat, finish, release: the attempt id makes repeating them safe) are
retried on a transport error or a 503 with bounded exponential backoff (:class:`RetryPolicy`); the others
(enqueue, dequeue, add_reward, cancel, ...) are sent once, since a lost response may hide a change made.
Idle connections are dropped before the server would close them (:data:`KEEPALIVE_EXPIRY_S`), so a
request is not sent on a connection the server is closing.

Requests go out on an aiohttp session (HTTP/1.1 keep-alive pool): with 32-64 concurrent calls, httpx's
connection pool scanned every pooled connection on every request (``is_idle``/``has_expired``, a
``getpeername`` and a ``poll`` each) and took most of the worker's ~9 ms of CPU per rollout
(``benchmarks/worker_throughput.py``). An httpx ``transport`` may still be given: tests use one that
drops connections or stands in for the server.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import aiohttp
import httpx
from pydantic import TypeAdapter

from agentbolt import errors
from agentbolt.types import (
    AddSpansResult,
    Attempt,
    AttemptFinish,
    Claim,
    DequeueRequest,
    Health,
    ModelVersion,
    ModelVersionCreate,
    Page,
    RewardCreate,
    Rollout,
    RolloutCreate,
    RolloutMode,
    RolloutsRead,
    RolloutStatus,
    RolloutWithSpans,
    Span,
    WaitRequest,
    WaitResult,
    Worker,
)
from agentbolt.types.queue import (
    AttemptFinishItem,
    AttemptHeartbeat,
    AttemptRelease,
    AttemptResult,
    DequeueBatchRequest,
)

log = logging.getLogger(__name__)

# uvicorn closes a connection idle for its ``timeout_keep_alive`` (5 s by default); dropping ours sooner
# means a request never races the server's close of the connection it goes out on.
KEEPALIVE_EXPIRY_S = 2.0
CONNECT_TIMEOUT_S = 10.0
MAX_CONNECTIONS = 200  # a worker's runners each hold one while they long-poll

_ERRORS_BY_CODE: dict[str, type[errors.AgentboltError]] = {
    cls.code: cls
    for cls in (
        errors.BadInput,
        errors.NotFound,
        errors.IllegalTransition,
        errors.Conflict,
        errors.StoreUnavailable,
        errors.Unauthorized,
    )
}
_ERRORS_BY_STATUS: dict[int, type[errors.AgentboltError]] = {
    400: errors.BadInput,
    401: errors.Unauthorized,
    404: errors.NotFound,
    409: errors.Conflict,
    413: errors.BadInput,
    503: errors.StoreUnavailable,
}

_JSON = {"content-type": "application/json"}
READ_CHUNK = 1_000  # rollouts per read_rollouts request: a few MB of spans at most per response
_ROLLOUTS_WITH_SPANS = TypeAdapter(list[RolloutWithSpans])
_CLAIMS = TypeAdapter(list[Claim])
_ATTEMPT_RESULTS = TypeAdapter(list[AttemptResult])


def _finish_item(attempt: Attempt, finish: AttemptFinish) -> AttemptFinishItem:
    return AttemptFinishItem(
        rollout_id=attempt.rollout_id,
        attempt_id=attempt.attempt_id,
        status=finish.status,
        error=finish.error,
        reward=finish.reward,
    )


@dataclass(frozen=True)
class RetryPolicy:
    """How an idempotent call is retried: ``tries`` in all, waiting ``first_delay_s`` doubled each time
    up to ``max_delay_s`` (with ±25% jitter, so many workers do not retry in step)."""

    tries: int = 8
    first_delay_s: float = 0.2
    max_delay_s: float = 5.0

    def delay_s(self, retry: int) -> float:
        """The wait before retry number ``retry`` (0 for the first)."""
        return min(self.first_delay_s * 2**retry, self.max_delay_s) * random.uniform(0.75, 1.25)


# A dropped connection needs one retry; the CLI and the trainer should not hang on a server that is down.
DEFAULT_RETRY = RetryPolicy(tries=3)
# The worker's: about 16 s of retries, to ride out a server restart rather than lose a finished attempt.
WORKER_RETRY = RetryPolicy(tries=8)
NO_RETRY = RetryPolicy(tries=1)


def auth_headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


@dataclass(frozen=True)
class Response:
    """A server's answer, read whole: what every ``ServerClient`` method needs of it, whichever library sent it."""

    status_code: int
    content: bytes
    method: str
    path: str

    @property
    def is_success(self) -> bool:
        return 200 <= self.status_code < 300

    def json(self) -> Any:
        return json.loads(self.content)


# What a failed send looks like from each library: the server may not have got (or answered) the request.
_TRANSPORT_ERRORS = (httpx.TransportError, aiohttp.ClientError, asyncio.TimeoutError)


def _raise_for(response: Response) -> None:
    if response.is_success:
        return
    try:
        error = response.json()["error"]
        message, code = str(error["message"]), str(error.get("code") or "")
    except Exception:
        message, code = response.content[:500].decode(errors="replace") or f"HTTP {response.status_code}", ""
    raise _error(response.status_code, message, code, f"{response.method} {response.path}")


def _error(status: int, message: str, code: str, where: str) -> errors.AgentboltError:
    """The exception the server raised, by the error's ``code`` (else its HTTP status)."""
    cls = _ERRORS_BY_CODE.get(code) or _ERRORS_BY_STATUS.get(status, errors.AgentboltError)
    return cls(f"{message} (HTTP {status} from {where})")


def _outcomes(response: Response, count: int) -> list[AttemptResult]:
    """The per-attempt results of a batch call, checked to answer each of its ``count`` items."""
    results = _ATTEMPT_RESULTS.validate_json(response.content)
    if len(results) != count:
        raise errors.AgentboltError(
            f"{response.method} {response.path} answered {len(results)} results for {count} attempts"
        )
    return results


def _outcome_error(result: AttemptResult, response: Response) -> errors.AgentboltError | None:
    """The exception for one attempt's result in a batch answer, or None when it succeeded."""
    if result.error is None:
        return None
    where = f"{response.method} {response.path}, attempt {result.attempt_id}"
    return _error(result.status_code, result.error.message, result.error.code or "", where)


def _aiohttp_timeout(timeout_s: float) -> aiohttp.ClientTimeout:
    """httpx's meaning of a timeout: a limit on each wait (a free connection, connecting, the next bytes),
    not on the whole request, so a large answer that keeps arriving is not cut off."""
    return aiohttp.ClientTimeout(total=None, connect=timeout_s, sock_connect=CONNECT_TIMEOUT_S, sock_read=timeout_s)


def _query(params: dict[str, Any] | None) -> list[tuple[str, str]] | None:
    """Query parameters as aiohttp takes them: a list repeats its key, booleans are spelled like httpx's."""
    if params is None:
        return None
    pairs: list[tuple[str, str]] = []
    for key, value in params.items():
        for item in value if isinstance(value, list) else [value]:
            pairs.append((key, ("true" if item else "false") if isinstance(item, bool) else str(item)))
    return pairs


class ServerClient:
    """Async client of one agentbolt server. Use as ``async with ServerClient(url) as client:``.

    Args:
        server_url: the server's base URL.
        api_key: the server's API key, if it has one.
        timeout_s: the limit of one request (long-polls add their wait).
        retry: how idempotent calls are retried (:data:`NO_RETRY` to send each once).
        transport: an httpx transport to send through (tests use one that drops connections).
    """

    def __init__(
        self,
        server_url: str,
        api_key: str | None = None,
        timeout_s: float = 30.0,
        retry: RetryPolicy = DEFAULT_RETRY,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.server_url = server_url.rstrip("/")
        self.retry = retry
        self.retries = 0  # idempotent calls sent again after a transport error or a 503
        self.timeout_s = timeout_s
        self._headers = auth_headers(api_key)
        self._session: aiohttp.ClientSession | None = None  # made on first use: it needs the running loop
        self._http: httpx.AsyncClient | None = None
        if transport is not None:
            self._http = httpx.AsyncClient(
                base_url=self.server_url,
                headers=self._headers,
                timeout=httpx.Timeout(timeout_s, connect=CONNECT_TIMEOUT_S),
                transport=transport,
            )

    async def __aenter__(self) -> ServerClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _send(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        content: bytes | str | None = None,
        headers: dict[str, str] | None = None,
        params: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Response:
        """One request, its answer read whole; raises one of :data:`_TRANSPORT_ERRORS` if the send failed."""
        if self._http is not None:
            limit = httpx.USE_CLIENT_DEFAULT if timeout is None else httpx.Timeout(timeout, connect=CONNECT_TIMEOUT_S)
            answer = await self._http.request(
                method,
                path,
                json=json,
                content=content,
                headers=headers,
                params=params,
                timeout=limit,
            )
            return Response(answer.status_code, answer.content, method, path)
        if self._session is None:
            self._session = aiohttp.ClientSession(
                headers=self._headers,
                connector=aiohttp.TCPConnector(limit=MAX_CONNECTIONS, keepalive_timeout=KEEPALIVE_EXPIRY_S),
                timeout=_aiohttp_timeout(self.timeout_s),
            )
        options: dict[str, Any] = {"json": json, "data": content, "headers": headers, "params": _query(params)}
        if timeout is not None:
            options["timeout"] = _aiohttp_timeout(timeout)
        async with self._session.request(method, self.server_url + path, **options) as reply:
            return Response(reply.status, await reply.read(), method, path)

    async def _request(self, method: str, path: str, *, idempotent: bool = False, **kwargs: Any) -> Response:
        """Send one request; an idempotent one is retried per :attr:`retry` on a transport error or a 503.

        Raises ServerUnreachable when the server could not be reached (after the retries), else the
        exception class of the server's error.
        """
        tries = self.retry.tries if idempotent else 1
        for retry in range(tries):
            last = retry + 1 == tries
            try:
                response = await self._send(method, path, **kwargs)
            except _TRANSPORT_ERRORS as exc:
                if last:
                    raise errors.ServerUnreachable(
                        f"cannot reach the agentbolt server at {self.server_url} "
                        f"({exc.__class__.__name__}: {exc}); is `agentbolt serve` running there?"
                    ) from exc
                why = f"{exc.__class__.__name__}: {exc}"
            else:
                if response.status_code != 503 or last:
                    _raise_for(response)
                    return response
                why = "HTTP 503"
            delay = self.retry.delay_s(retry)
            self.retries += 1
            log.info("%s %s failed (%s); retrying in %.2fs", method, path, why, delay)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable: the last try returns or raises")

    async def health(self) -> Health:
        return Health.model_validate_json((await self._request("GET", "/health", idempotent=True)).content)

    async def enqueue(self, rollouts: list[RolloutCreate]) -> list[Rollout]:
        payload = [r.model_dump(mode="json", exclude_none=True) for r in rollouts]
        response = await self._request("POST", "/api/rollouts/batch", json=payload)
        return [Rollout.model_validate(item) for item in response.json()]

    async def dequeue(
        self, worker_id: str, modes: list[RolloutMode] | None = None, wait_s: float = 0.0
    ) -> Claim | None:
        request = DequeueRequest(worker_id=worker_id, modes=modes, wait_s=wait_s)
        response = await self._request(
            "POST", "/api/dequeue", content=request.model_dump_json(), headers=_JSON, timeout=wait_s + 30.0
        )
        if response.status_code == 204:
            return None
        return Claim.model_validate_json(response.content)

    async def dequeue_many(
        self, worker_ids: list[str], modes: list[RolloutMode] | None = None, wait_s: float = 0.0
    ) -> list[Claim]:
        """Claim rollouts for several runners in one request (``POST /api/dequeue/batch``): at most one each,
        ``[]`` when none was queued within ``wait_s``. Sent once, like :meth:`dequeue`."""
        request = DequeueBatchRequest(worker_ids=worker_ids, modes=modes, wait_s=wait_s)
        response = await self._request(
            "POST", "/api/dequeue/batch", content=request.model_dump_json(), headers=_JSON, timeout=wait_s + 30.0
        )
        return _CLAIMS.validate_json(response.content)

    async def heartbeat(self, attempt: Attempt, worker_id: str | None = None) -> None:
        """Tell the server the attempt's worker is alive (retried). Raises IllegalTransition once it ended."""
        await self._request(
            "POST",
            f"/api/rollouts/{attempt.rollout_id}/attempts/{attempt.attempt_id}/heartbeat",
            idempotent=True,
            json={"worker_id": worker_id},
        )

    async def finish(self, attempt: Attempt, finish: AttemptFinish) -> Rollout:
        """End the attempt (retried: the server answers a repeated identical finish with the rollout again).

        Raises IllegalTransition if the server had ended the attempt otherwise (e.g. timed out).
        """
        return await self._end_attempt(attempt, "finish", finish)

    async def heartbeats(self, beats: list[tuple[Attempt, str | None]]) -> list[errors.AgentboltError | None]:
        """The heartbeats of several ``(attempt, worker_id)`` in one request (``POST /api/attempts/heartbeat``,
        retried): for each, None, or the exception :meth:`heartbeat` would have raised (IllegalTransition once
        the attempt has ended...)."""
        body = [
            AttemptHeartbeat(rollout_id=a.rollout_id, attempt_id=a.attempt_id, worker_id=w).model_dump(mode="json")
            for a, w in beats
        ]
        response = await self._request("POST", "/api/attempts/heartbeat", idempotent=True, json=body)
        return [_outcome_error(result, response) for result in _outcomes(response, len(beats))]

    async def finish_many(self, finishes: list[tuple[Attempt, AttemptFinish]]) -> list[Rollout | errors.AgentboltError]:
        """End several attempts in one request (``POST /api/attempts/finish``, retried like :meth:`finish`): for
        each, its rollout, or the exception :meth:`finish` would have raised (IllegalTransition...)."""
        body = "[" + ",".join(_finish_item(a, f).model_dump_json(exclude_none=True) for a, f in finishes) + "]"
        response = await self._request("POST", "/api/attempts/finish", idempotent=True, content=body, headers=_JSON)
        outcomes: list[Rollout | errors.AgentboltError] = []
        for result in _outcomes(response, len(finishes)):
            error = _outcome_error(result, response)
            if error is not None:
                outcomes.append(error)
            elif result.rollout is not None:
                outcomes.append(result.rollout)
            else:
                outcomes.append(
                    errors.AgentboltError(f"the server answered no rollout for attempt {result.attempt_id}")
                )
        return outcomes

    async def release(self, attempt: Attempt, release: AttemptRelease) -> Rollout:
        """Give the unfinished attempt back so its rollout is requeued at once (retried, like finish).

        Raises IllegalTransition if the attempt had already ended otherwise.
        """
        return await self._end_attempt(attempt, "release", release)

    async def _end_attempt(self, attempt: Attempt, action: str, body: AttemptFinish | AttemptRelease) -> Rollout:
        """``POST .../attempts/{id}/{action}``: safe to repeat, so retried (the server answers a repeat alike)."""
        response = await self._request(
            "POST",
            f"/api/rollouts/{attempt.rollout_id}/attempts/{attempt.attempt_id}/{action}",
            idempotent=True,
            content=body.model_dump_json(exclude_none=True),
            headers=_JSON,
        )
        return Rollout.model_validate_json(response.content)

    async def send_spans(self, otlp_protobuf: bytes) -> None:
        """``POST /v1/traces`` with an OTLP protobuf body (retried: the server stores each span once)."""
        await self._request(
            "POST",
            "/v1/traces",
            idempotent=True,
            content=otlp_protobuf,
            headers={"content-type": "application/x-protobuf"},
        )

    async def get_rollout(self, rollout_id: str) -> Rollout:
        response = await self._request("GET", f"/api/rollouts/{rollout_id}", idempotent=True)
        return Rollout.model_validate_json(response.content)

    async def query_rollouts(
        self,
        status: list[RolloutStatus] | None = None,
        mode: RolloutMode | None = None,
        group_id: str | None = None,
        limit: int = 100,
        offset: int = 0,
        with_attempts: bool = False,
    ) -> Page[Rollout]:
        params: dict[str, Any] = {"limit": limit, "offset": offset, "with_attempts": with_attempts}
        if status:
            params["status"] = [s.value for s in status]
        if mode:
            params["mode"] = mode
        if group_id:
            params["group_id"] = group_id
        response = await self._request("GET", "/api/rollouts", idempotent=True, params=params)
        return Page[Rollout].model_validate_json(response.content)

    async def spans(
        self, rollout_id: str, attempt_id: str | None = None, limit: int = 10_000, offset: int = 0
    ) -> Page[Span]:
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if attempt_id:
            params["attempt_id"] = attempt_id
        response = await self._request("GET", f"/api/rollouts/{rollout_id}/spans", idempotent=True, params=params)
        return Page[Span].model_validate_json(response.content)

    async def all_spans(self, rollout_id: str) -> list[Span]:
        """Every span of a rollout, paging through as needed."""
        spans: list[Span] = []
        while True:
            page = await self.spans(rollout_id, offset=len(spans))
            spans.extend(page.items)
            if not page.items or len(spans) >= page.total:
                return spans

    async def read_rollouts(self, rollout_ids: list[str]) -> list[RolloutWithSpans]:
        """Rollouts with their attempts and every span, in the order given: one request per
        ``READ_CHUNK`` rollouts, not one per rollout."""
        found: list[RolloutWithSpans] = []
        for start in range(0, len(rollout_ids), READ_CHUNK):
            body = RolloutsRead(rollout_ids=rollout_ids[start : start + READ_CHUNK]).model_dump(mode="json")
            response = await self._request("POST", "/api/rollouts/read", idempotent=True, json=body)
            found.extend(_ROLLOUTS_WITH_SPANS.validate_json(response.content))
        return found

    async def wait(self, rollout_ids: list[str], timeout_s: float = 30.0) -> WaitResult:
        request = WaitRequest(rollout_ids=rollout_ids, timeout_s=timeout_s)
        response = await self._request(
            "POST",
            "/api/rollouts/wait",
            idempotent=True,
            json=request.model_dump(mode="json"),
            timeout=timeout_s + 30.0,
        )
        return WaitResult.model_validate_json(response.content)

    async def add_reward(self, rollout_id: str, reward: RewardCreate) -> AddSpansResult:
        response = await self._request(
            "POST", f"/api/rollouts/{rollout_id}/rewards", json=reward.model_dump(mode="json", exclude_none=True)
        )
        return AddSpansResult.model_validate_json(response.content)

    async def cancel(self, rollout_id: str) -> Rollout:
        return Rollout.model_validate_json((await self._request("POST", f"/api/rollouts/{rollout_id}/cancel")).content)

    async def workers(self) -> list[Worker]:
        return [Worker.model_validate(w) for w in (await self._request("GET", "/api/workers", idempotent=True)).json()]

    async def add_model_version(self, record: ModelVersionCreate) -> ModelVersion:
        response = await self._request("POST", "/api/model-versions", json=record.model_dump(mode="json"))
        return ModelVersion.model_validate_json(response.content)

    async def latest_model_version(self) -> ModelVersion | None:
        try:
            response = await self._request("GET", "/api/model-versions/latest", idempotent=True)
        except errors.NotFound:
            return None
        return ModelVersion.model_validate_json(response.content)
