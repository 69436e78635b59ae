"""Forward generation to upstream inference servers (vLLM, SGLang, any OpenAI-compatible server).

:class:`UpstreamBackend` is the gateway's Backend for engines that run elsewhere. The gateway renders chat
messages into prompt token ids itself, so every upstream is sent token ids on the legacy completions
endpoint, ``POST {url}/completions`` with ``"prompt": [ids...]``, and asked to send the sampled token ids
back. What it relies on from vLLM's OpenAI server (``vllm/entrypoints/openai/completion/protocol.py`` and
``serving.py``):

- request: ``prompt`` as a list of token ids; ``return_token_ids: true`` (vLLM >= 0.10.2) puts the sampled
  ids in ``choices[0].token_ids``; ``logprobs: k`` returns ``choices[0].logprobs.token_logprobs`` (the
  sampled token's logprob at each position, ``None`` where unavailable) and ``top_logprobs`` (dicts of the
  sampled token and the k best); ``return_tokens_as_token_ids: true`` names tokens in ``logprobs.tokens``
  and the ``top_logprobs`` keys as ``"token_id:<id>"``, so the alternatives are exact ids (and older vLLM
  versions without ``return_token_ids`` still give exact ids this way); ``stop_token_ids``, ``seed``,
  ``skip_special_tokens: false`` and ``include_stop_str_in_output: true`` keep the end-of-turn token in the
  output, as agentbolt's own engine does.
- response: ``finish_reason`` (``stop``/``length``; errors abort the request upstream), ``usage``.

Logprobs: the trainer's PPO ratio needs agentbolt's engine convention, ``log_softmax(logits / temperature)``
of the sampled token before any top-p truncation (``log_softmax(logits)`` when greedy). vLLM's default
``--logprobs-mode raw_logprobs`` reports ``log_softmax(logits)``: right only at temperature 1 or 0. With
``--logprobs-mode processed_logprobs`` (vLLM >= 0.10.2) it reports the temperature-scaled distribution
*after* top-p/top-k masking: right whenever ``top_p`` is 1. The backend is told which mode the replicas run
(``logprobs_mode``) and passes logprobs on only where they are right; elsewhere the result's ``logprobs`` is
``[]`` (never wrong numbers), counted in ``stats()["unusable_logprobs"]``, and the trainer drops or
recomputes those calls. When an upstream gives no logprobs at all, ``logprobs`` is ``[]`` as well
(``no_logprobs``).

Upstreams that return no token ids (a generic OpenAI-compatible server): the text is tokenized locally,
the result says ``token_source="retokenized"`` with ``token_drift`` = |local count - the upstream's
``usage.completion_tokens``|, the backend logs one loud WARNING and counts these calls in :meth:`stats`.

Model version: vLLM knows nothing of agentbolt's weight versions. The trainer that pushes new weights to
the upstreams calls :meth:`UpstreamBackend.set_model_version`; a request is stamped with the version set
when it was sent, unless the upstream answers with an ``X-Agentbolt-Model-Version`` header (a proxy or
server that knows better), which wins.

Transport: one aiohttp session (keep-alive connection pool) shared by all replicas; aiohttp because it
costs several times less CPU per call than httpx, and this hop is on every LLM call's critical path.

Replicas: a call with an ``affinity`` (the rollout id) always goes to the same replica while it is up
(rendezvous hashing, so adding a replica moves only the rollouts that now prefer it), which lets the
replica reuse its prefix cache across a rollout's turns; calls without one go round robin. A replica that
refuses the connection (or drops it) is marked down for ``down_for_s`` and the call moves to the next one.
A 503 (vLLM paused for a weight update, :mod:`agentbolt.gateway.weight_sync`) is sent again with back-off for
up to ``busy_wait_s``; the call is stamped with the model version set when the answered try went out.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import logging
import math
import time
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp
from pydantic import BaseModel, ConfigDict, ValidationError

from agentbolt.errors import AgentboltError, BadInput
from agentbolt.models import eos_token_ids
from agentbolt.types import GenerationRequest, GenerationResult, GenerationTimings, TokenLogprob

log = logging.getLogger(__name__)

MODEL_VERSION_HEADER = "X-Agentbolt-Model-Version"
DEFAULT_MAX_CONTEXT = 32768  # used only when neither the caller nor the tokenizer knows the context length
_TOKEN_ID_PREFIX = "token_id:"  # how vLLM names tokens with return_tokens_as_token_ids
# Upstream statuses that mean the deployment is misconfigured (key, model name), not that the request is bad.
_DEPLOYMENT_STATUSES = frozenset({401, 403, 404})


class UpstreamError(AgentboltError):
    """The upstream inference server failed: a 5xx, a timeout, an unreadable answer, or no replica reachable."""

    http_status = 502
    code = "upstream_error"


# --- the upstream's wire format (only the fields agentbolt reads; the rest is ignored) -----------------


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _Logprobs(_Wire):
    token_logprobs: list[float | None] | None = None
    tokens: list[str] | None = None
    top_logprobs: list[dict[str, float] | None] | None = None


class _Choice(_Wire):
    text: str = ""
    token_ids: list[int] | None = None
    logprobs: _Logprobs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


class _Usage(_Wire):
    completion_tokens: int | None = None


class _Completion(_Wire):
    choices: list[_Choice]
    usage: _Usage | None = None


# --- replica choice ----------------------------------------------------------------------------------


def rank_replicas(affinity: str, urls: Sequence[str]) -> list[str]:
    """``urls`` in the order ``affinity`` prefers them (rendezvous hashing): stable, and adding or removing
    a URL only moves the keys that ranked it first."""

    def score(url: str) -> bytes:
        return hashlib.blake2b(f"{url}\0{affinity}".encode(), digest_size=8).digest()

    return sorted(urls, key=score, reverse=True)


@dataclass
class _Replica:
    url: str
    down_until: float = 0.0


@dataclass(frozen=True)
class _Answer:
    """An upstream's HTTP answer, read whole."""

    url: str
    status: int
    body: bytes
    model_version: str | None  # the X-Agentbolt-Model-Version header, if sent
    reason: str


class UpstreamBackend:
    """A gateway Backend that forwards token ids to one or more upstream OpenAI-compatible servers.

    Args:
        urls: base URLs of the replicas, ending in ``/v1`` (e.g. ``http://gpu1:8000/v1``).
        tokenizer: the HF tokenizer of the model the upstreams serve (the gateway renders chats with it).
        model_name: the name the gateway serves the model under.
        upstream_model: the name the upstreams know it by (default ``model_name``).
        api_key: sent as ``Authorization: Bearer ...`` to the upstreams.
        timeout_s: longest wait for one upstream answer.
        max_context: prompt + new tokens limit; default the tokenizer's ``model_max_length`` when it
            knows one, else :data:`DEFAULT_MAX_CONTEXT` (the upstream still refuses what it cannot fit).
        down_for_s: how long a replica that refused a connection is skipped.
        busy_wait_s: how long a call keeps being sent again while the replicas answer 503 (vLLM answers so while
            paused for a weight update, :mod:`agentbolt.gateway.weight_sync`).
        max_connections: connection pool size shared by all replicas.
        connect_timeout_s: longest wait to connect to a replica before trying the next.
        logprobs_mode: the replicas' ``--logprobs-mode``: ``raw`` (vLLM's default, ``raw_logprobs``) or
            ``processed`` (``processed_logprobs``); decides which calls' logprobs are passed on (module docstring).

    Raises:
        ValueError: no URLs.
    """

    system = "vllm"  # gen_ai.system on the spans: the API spoken is vLLM's extended completions

    def __init__(
        self,
        urls: Sequence[str],
        tokenizer: Any,
        model_name: str,
        *,
        upstream_model: str | None = None,
        api_key: str | None = None,
        timeout_s: float = 600.0,
        max_context: int | None = None,
        down_for_s: float = 5.0,
        busy_wait_s: float = 120.0,
        max_connections: int = 256,
        connect_timeout_s: float = 5.0,
        logprobs_mode: Literal["raw", "processed"] = "raw",
    ) -> None:
        if not urls:
            raise ValueError("UpstreamBackend needs at least one upstream URL (e.g. http://127.0.0.1:8000/v1)")
        self.model_name = model_name
        self.tokenizer = tokenizer
        self.upstream_model = upstream_model or model_name
        self.max_context = max_context or _tokenizer_context(tokenizer)
        self.vocab_size = len(tokenizer)
        self.eos_token_ids = eos_token_ids(tokenizer)
        self.down_for_s = down_for_s
        self.busy_wait_s = busy_wait_s
        self._replicas = {url.rstrip("/"): _Replica(url.rstrip("/")) for url in urls}
        self._urls = list(self._replicas)
        self._round_robin = itertools.count()
        self._version = 0
        self.timeout_s = timeout_s
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=min(connect_timeout_s, timeout_s))
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None  # made on first use: it binds to the running loop
        self._session_loop: asyncio.AbstractEventLoop | None = None
        self._closer: AsyncGenerator[None, None] | None = None
        self.logprobs_mode = logprobs_mode
        self._stats = {
            "requests": 0,
            "failovers": 0,
            "retokenized": 0,
            "token_drift_total": 0,
            "no_logprobs": 0,
            "unusable_logprobs": 0,
            "busy_retries": 0,
        }
        self._warned_retokenized = False

    # --- Backend protocol ------------------------------------------------------------------------------

    @property
    def model_version(self) -> int:
        """The weights version the upstreams serve now, as last set by the trainer."""
        return self._version

    @property
    def urls(self) -> list[str]:
        """The replicas' base URLs (``.../v1``), in the order given."""
        return list(self._urls)

    def set_model_version(self, version: int) -> None:
        """Record that the upstreams now serve weights ``version`` (call after pushing them new weights)."""
        self._version = version

    def check_request(self, request: GenerationRequest) -> None:
        """Raise :class:`BadInput` when ``request`` cannot fit the context window or names unknown token ids."""
        request.check_fits(self.max_context, self.vocab_size)

    async def generate(self, request: GenerationRequest, *, affinity: str | None = None) -> GenerationResult:
        """Generate on one replica: the one ``affinity`` sticks to, else the next in round robin.

        Raises:
            BadInput: the upstream refused the request as invalid (its message is passed on).
            UpstreamError: no replica reachable, an upstream 5xx or timeout, or an answer agentbolt cannot read.
        """
        self._stats["requests"] += 1
        body = self._body(request)
        started = time.monotonic()
        answer, version = await self._post_when_ready(body, affinity)
        elapsed = time.monotonic() - started
        if answer.model_version is not None:
            try:
                version = int(answer.model_version)
            except ValueError:
                log.warning("upstream sent a non-integer %s header: %r", MODEL_VERSION_HEADER, answer.model_version)
        return self._result(answer, request, version, elapsed)

    async def aclose(self) -> None:
        """Close the connection pool (call it on the event loop that served the calls)."""
        closer, self._closer, self._session = self._closer, None, None
        if closer is not None and self._session_loop is asyncio.get_running_loop():
            await closer.aclose()

    def stats(self) -> dict[str, int]:
        """Counters since start: requests, failovers, retokenized calls and their total token drift,
        calls without usable logprobs, and replicas marked down now."""
        now = time.monotonic()
        down = sum(1 for r in self._replicas.values() if r.down_until > now)
        return {**self._stats, "replicas_down": down}

    def logprobs_usable(self, request: GenerationRequest) -> bool:
        """Whether the replicas' logprobs for ``request`` follow the engine convention (see the module docstring)."""
        if self.logprobs_mode == "processed":  # greedy under processed_logprobs is not documented: not passed on
            return request.top_p >= 1.0 and request.temperature > 0
        return request.temperature in (0.0, 1.0)

    # --- request -------------------------------------------------------------------------------------

    def _body(self, request: GenerationRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.upstream_model,
            "prompt": request.prompt_token_ids,
            "max_tokens": request.max_new_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "logprobs": request.top_logprobs,  # vLLM: the sampled token's logprob plus this many alternatives
            "return_token_ids": True,
            "return_tokens_as_token_ids": True,
            "skip_special_tokens": False,
            "include_stop_str_in_output": True,
        }
        if request.stop_token_ids:
            body["stop_token_ids"] = request.stop_token_ids
        if request.seed is not None:
            body["seed"] = request.seed
        return body

    def _candidates(self, affinity: str | None) -> list[_Replica]:
        if affinity is not None:
            order = rank_replicas(affinity, self._urls)
        else:
            start = next(self._round_robin) % len(self._urls)
            order = self._urls[start:] + self._urls[:start]
        now = time.monotonic()
        replicas = [self._replicas[url] for url in order]
        # Replicas marked down go last rather than nowhere: if all are down, one may be back.
        return [r for r in replicas if r.down_until <= now] + [r for r in replicas if r.down_until > now]

    async def _session_now(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._session_loop is not loop:
            self._session_loop = loop
            # One pool for all replicas: keep-alive connections make the per-call cost a write and a read.
            # aiohttp rather than httpx: measured on loopback, httpx spent ~0.85 ms of CPU per call, aiohttp ~0.15 ms.
            connector = aiohttp.TCPConnector(limit=self._max_connections, limit_per_host=0)
            self._session = aiohttp.ClientSession(connector=connector, headers=self._headers, timeout=self._timeout)
            # The pool belongs to this loop. The server that owns the loop may end it without calling aclose(),
            # so a suspended async generator closes the pool then: loops finalize their live async generators
            # (loop.shutdown_asyncgens, which asyncio.run and uvicorn call) before they close.
            self._closer = _close_when_loop_ends(self._session)
            await anext(self._closer)
        return self._session

    async def _post_when_ready(self, body: dict[str, Any], affinity: str | None) -> tuple[_Answer, int]:
        """Send ``body``; while the replicas answer 503 (vLLM paused for a weight update, or overloaded), send it
        again with back-off for up to ``busy_wait_s``. Returns the answer and the model version set when the
        answered try was sent (what the call is stamped with)."""
        deadline = time.monotonic() + self.busy_wait_s
        delay = 0.05
        while True:
            version = self._version
            answer = await self._post(body, affinity)
            if answer.status != 503 or time.monotonic() + delay > deadline:
                if answer.status >= 400:
                    raise _status_error(answer)
                return answer, version
            self._stats["busy_retries"] += 1
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def _post(self, body: dict[str, Any], affinity: str | None) -> _Answer:
        payload = json.dumps(body, separators=(",", ":")).encode()
        session = await self._session_now()
        failures: list[str] = []
        for replica in self._candidates(affinity):
            url = f"{replica.url}/completions"
            try:
                async with session.post(url, data=payload) as response:
                    answer = _Answer(
                        url,
                        response.status,
                        await response.read(),
                        response.headers.get(MODEL_VERSION_HEADER),
                        response.reason or "",
                    )
            except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
                # Refused, or no connection in time: skip this replica for a while and try the next one.
                replica.down_until = time.monotonic() + self.down_for_s
                failures.append(f"{replica.url}: {type(exc).__name__}: {exc}")
                self._stats["failovers"] += 1
                log.warning("upstream %s unreachable (%s); marked down for %.0fs", replica.url, exc, self.down_for_s)
                continue
            except (aiohttp.ServerTimeoutError, asyncio.TimeoutError) as exc:
                # Not retried elsewhere: that would double an already long wait.
                raise UpstreamError(
                    f"upstream {replica.url} did not answer within {self.timeout_s}s ({type(exc).__name__})"
                ) from exc
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError, aiohttp.ClientPayloadError) as exc:
                # Dropped before a full answer (a crash, or a keep-alive connection the replica had just closed):
                # generation has no side effects, so the next replica may run it; a crashed replica is marked
                # down when the next call cannot connect.
                failures.append(f"{replica.url}: {type(exc).__name__}: {exc}")
                self._stats["failovers"] += 1
                log.warning("upstream %s dropped the connection (%s); trying the next replica", replica.url, exc)
                continue
            except aiohttp.ClientError as exc:
                raise UpstreamError(f"upstream {replica.url} failed: {type(exc).__name__}: {exc}") from exc
            replica.down_until = 0.0
            return answer
        raise UpstreamError("no upstream replica could be reached: " + "; ".join(failures))

    # --- response ------------------------------------------------------------------------------------

    def _result(self, answer: _Answer, request: GenerationRequest, version: int, elapsed: float) -> GenerationResult:
        try:
            completion = _Completion.model_validate_json(answer.body)
        except ValidationError as exc:
            raise UpstreamError(f"upstream {answer.url} answered with a body that is not a completion: {exc}") from exc
        if not completion.choices:
            raise UpstreamError(f"upstream {answer.url} answered with no choices")
        choice = completion.choices[0]
        finish_reason = _finish_reason(choice, answer.url)
        timings = GenerationTimings(queued_s=0.0, generation_s=elapsed, batch_size=1)
        ids = choice.token_ids if choice.token_ids is not None else _ids_from_logprob_tokens(choice.logprobs)
        if ids is not None:
            logprobs = _sampled_logprobs(choice.logprobs, len(ids))
            top = _top_logprobs(choice.logprobs, len(ids), request.top_logprobs)
            if logprobs is None:
                self._stats["no_logprobs"] += 1
            elif not self.logprobs_usable(request):
                logprobs = None
                self._stats["unusable_logprobs"] += 1
            return GenerationResult(
                response_token_ids=ids,
                logprobs=logprobs or [],
                top_logprobs=top,
                finish_reason=finish_reason,
                model_version=version,
                timings=timings,
            )
        return self._retokenized(choice, completion.usage, finish_reason, version, timings)

    def _retokenized(
        self,
        choice: _Choice,
        usage: _Usage | None,
        finish_reason: Literal["stop", "length"],
        version: int,
        timings: GenerationTimings,
    ) -> GenerationResult:
        if not self._warned_retokenized:
            self._warned_retokenized = True
            log.warning(
                "the upstream (%s) returned no token ids: tokenizing its text locally, which can differ from the "
                "tokens it sampled and silently bias RL. Use an upstream that supports return_token_ids "
                "(vLLM >= 0.10.2) for training; spans of these calls say token_source=retokenized",
                ", ".join(self._urls),
            )
        ids = [int(i) for i in self.tokenizer.encode(choice.text, add_special_tokens=False)]
        # Servers that drop the end-of-turn token from the text still stopped on it; the engine keeps it as the
        # last response token (the trainer must see the model choosing to stop), so put it back.
        if finish_reason == "stop" and (not ids or ids[-1] not in self.eos_token_ids):
            stop_id = choice.stop_reason if isinstance(choice.stop_reason, int) else self.tokenizer.eos_token_id
            if stop_id is not None:
                ids.append(int(stop_id))
        drift = None
        if usage is not None and usage.completion_tokens is not None:
            drift = abs(len(ids) - usage.completion_tokens)
            self._stats["token_drift_total"] += drift
        self._stats["retokenized"] += 1
        logprobs = self._aligned_logprobs(choice.logprobs, ids)
        if logprobs is None:
            self._stats["no_logprobs"] += 1
        return GenerationResult(
            response_token_ids=ids,
            logprobs=logprobs or [],
            finish_reason=finish_reason,
            model_version=version,
            timings=timings,
            token_source="retokenized",
            token_drift=drift,
        )

    def _aligned_logprobs(self, lp: _Logprobs | None, ids: list[int]) -> list[float] | None:
        """The upstream's logprobs, only if its tokens are provably the local ones (same text, token by token)."""
        values = _sampled_logprobs(lp, len(ids))
        if values is None or lp is None or lp.tokens is None:
            return None
        local = [self.tokenizer.decode([i]) for i in ids]
        return values if local == lp.tokens else None


# --- helpers -------------------------------------------------------------------------------------------


async def _close_when_loop_ends(session: aiohttp.ClientSession) -> AsyncGenerator[None, None]:
    try:
        yield
    finally:
        await session.close()


def _status_error(answer: _Answer) -> AgentboltError:
    message, status, url = _error_message(answer), answer.status, answer.url
    if status >= 500:
        return UpstreamError(f"upstream {url} failed with HTTP {status}: {message}")
    if status in _DEPLOYMENT_STATUSES:
        return UpstreamError(
            f"upstream {url} refused the call with HTTP {status}: {message} "
            "(check the upstream URL, API key and model name the gateway was started with)"
        )
    if status == 429:
        return UpstreamError(f"upstream {url} is overloaded (HTTP 429): {message}")
    return BadInput(f"the upstream model server rejected the request: {message}")


def _error_message(answer: _Answer) -> str:
    """The message of an OpenAI-style (``{"error": {"message"}}``) or vLLM-style error body, else its text."""
    text = answer.body.decode("utf-8", "replace")
    try:
        body = json.loads(text)
    except ValueError:
        return text[:500] or answer.reason
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
        for key in ("message", "detail", "error"):
            if isinstance(body.get(key), str):
                return str(body[key])
    return text[:500]


def _finish_reason(choice: _Choice, url: str) -> Literal["stop", "length"]:
    reason = choice.finish_reason
    if reason == "length":
        return "length"
    if reason in (None, "abort", "error"):
        raise UpstreamError(f"upstream {url} ended the generation abnormally (finish_reason={reason!r})")
    return "stop"  # "stop", and other servers' names for it ("eos", "stop_sequence", "tool_calls"...)


def _ids_from_logprob_tokens(lp: _Logprobs | None) -> list[int] | None:
    """Exact ids from ``"token_id:<id>"`` token names (vLLM's return_tokens_as_token_ids), if all are such."""
    if lp is None or not lp.tokens or not all(t.startswith(_TOKEN_ID_PREFIX) for t in lp.tokens):
        return None
    try:
        return [int(t[len(_TOKEN_ID_PREFIX) :]) for t in lp.tokens]
    except ValueError:
        return None


def _sampled_logprobs(lp: _Logprobs | None, n: int) -> list[float] | None:
    """One finite-or-clamped logprob per response token, or None when any is missing."""
    if lp is None or lp.token_logprobs is None or len(lp.token_logprobs) != n:
        return None
    values = lp.token_logprobs
    if any(v is None or math.isnan(v) for v in values):
        return None
    return [float(v) for v in values if v is not None]


def _top_logprobs(lp: _Logprobs | None, n: int, k: int) -> list[list[TokenLogprob]] | None:
    """The k most likely alternatives per position, when the upstream named them by token id."""
    if k == 0 or lp is None or lp.top_logprobs is None or len(lp.top_logprobs) != n:
        return None
    out: list[list[TokenLogprob]] = []
    for step in lp.top_logprobs:
        if step is None or not all(key.startswith(_TOKEN_ID_PREFIX) for key in step):
            return None
        best = sorted(step.items(), key=lambda kv: kv[1], reverse=True)[:k]
        out.append([TokenLogprob(token_id=int(key[len(_TOKEN_ID_PREFIX) :]), logprob=v) for key, v in best])
    return out


def _tokenizer_context(tokenizer: Any) -> int:
    length = getattr(tokenizer, "model_max_length", None)
    # HF uses a huge sentinel (1e30) when the tokenizer does not know its model's context length.
    if isinstance(length, int) and 0 < length < 10**7:
        return length
    log.info("the tokenizer does not say the model's context length; assuming %d tokens", DEFAULT_MAX_CONTEXT)
    return DEFAULT_MAX_CONTEXT
