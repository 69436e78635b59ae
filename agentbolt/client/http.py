"""``ServerClient``: the typed HTTP client of the Lightning Server's queue API.

Errors come back as the same exception classes the server raised (BadInput, NotFound,
IllegalTransition, ...), carrying the server's message.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

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

READ_CHUNK = 1_000  # rollouts per read_rollouts request: a few MB of spans at most per response
_ROLLOUTS_WITH_SPANS = TypeAdapter(list[RolloutWithSpans])


def auth_headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def _raise_for(response: httpx.Response) -> None:
    if response.is_success:
        return
    try:
        error = response.json()["error"]
        message, code = str(error["message"]), str(error.get("code") or "")
    except Exception:
        message, code = response.text[:500] or response.reason_phrase, ""
    cls = _ERRORS_BY_CODE.get(code) or _ERRORS_BY_STATUS.get(response.status_code, errors.AgentboltError)
    raise cls(f"{message} (HTTP {response.status_code} from {response.request.method} {response.request.url.path})")


class ServerClient:
    """Async client of one agentbolt server. Use as ``async with ServerClient(url) as client:``."""

    def __init__(self, server_url: str, api_key: str | None = None, timeout_s: float = 30.0) -> None:
        self.server_url = server_url.rstrip("/")
        self._http = httpx.AsyncClient(
            base_url=self.server_url,
            headers=auth_headers(api_key),
            timeout=httpx.Timeout(timeout_s, connect=10.0),
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=200),
        )

    async def __aenter__(self) -> ServerClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = await self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise errors.ServerUnreachable(
                f"cannot reach the agentbolt server at {self.server_url} ({exc.__class__.__name__}: {exc}); "
                "is `agentbolt serve` running there?"
            ) from exc
        _raise_for(response)
        return response

    async def health(self) -> Health:
        return Health.model_validate_json((await self._request("GET", "/health")).content)

    async def enqueue(self, rollouts: list[RolloutCreate]) -> list[Rollout]:
        payload = [r.model_dump(mode="json", exclude_none=True) for r in rollouts]
        response = await self._request("POST", "/api/rollouts/batch", json=payload)
        return [Rollout.model_validate(item) for item in response.json()]

    async def dequeue(
        self, worker_id: str, modes: list[RolloutMode] | None = None, wait_s: float = 0.0
    ) -> Claim | None:
        request = DequeueRequest(worker_id=worker_id, modes=modes, wait_s=wait_s)
        response = await self._request(
            "POST", "/api/dequeue", json=request.model_dump(mode="json"), timeout=wait_s + 30.0
        )
        if response.status_code == 204:
            return None
        return Claim.model_validate_json(response.content)

    async def heartbeat(self, attempt: Attempt, worker_id: str | None = None) -> None:
        await self._request(
            "POST",
            f"/api/rollouts/{attempt.rollout_id}/attempts/{attempt.attempt_id}/heartbeat",
            json={"worker_id": worker_id},
        )

    async def finish(self, attempt: Attempt, finish: AttemptFinish) -> Rollout:
        response = await self._request(
            "POST",
            f"/api/rollouts/{attempt.rollout_id}/attempts/{attempt.attempt_id}/finish",
            content=finish.model_dump_json(exclude_none=True),
            headers={"content-type": "application/json"},
        )
        return Rollout.model_validate_json(response.content)

    async def get_rollout(self, rollout_id: str) -> Rollout:
        return Rollout.model_validate_json((await self._request("GET", f"/api/rollouts/{rollout_id}")).content)

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
        response = await self._request("GET", "/api/rollouts", params=params)
        return Page[Rollout].model_validate_json(response.content)

    async def spans(
        self, rollout_id: str, attempt_id: str | None = None, limit: int = 10_000, offset: int = 0
    ) -> Page[Span]:
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if attempt_id:
            params["attempt_id"] = attempt_id
        response = await self._request("GET", f"/api/rollouts/{rollout_id}/spans", params=params)
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
            response = await self._request("POST", "/api/rollouts/read", json=body)
            found.extend(_ROLLOUTS_WITH_SPANS.validate_json(response.content))
        return found

    async def wait(self, rollout_ids: list[str], timeout_s: float = 30.0) -> WaitResult:
        request = WaitRequest(rollout_ids=rollout_ids, timeout_s=timeout_s)
        response = await self._request(
            "POST", "/api/rollouts/wait", json=request.model_dump(mode="json"), timeout=timeout_s + 30.0
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
        return [Worker.model_validate(w) for w in (await self._request("GET", "/api/workers")).json()]

    async def add_model_version(self, record: ModelVersionCreate) -> ModelVersion:
        response = await self._request("POST", "/api/model-versions", json=record.model_dump(mode="json"))
        return ModelVersion.model_validate_json(response.content)

    async def latest_model_version(self) -> ModelVersion | None:
        try:
            response = await self._request("GET", "/api/model-versions/latest")
        except errors.NotFound:
            return None
        return ModelVersion.model_validate_json(response.content)
