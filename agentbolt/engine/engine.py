"""The embedded inference engine: dynamic batching over one PyTorch model, with weight hot-swap.

One background thread owns the model. ``Engine.generate`` (asyncio) puts a request on a queue and
awaits its result. The thread takes the first queued request, waits ``batch_wait_s`` for more to
arrive (up to ``max_batch_size``), left-pads the prompts into one batch and decodes it step by step
with the KV cache: each step samples one token for every unfinished sequence, each with its own
temperature, top-p, stop ids, length limit and random generator. Finished sequences are dropped from
the cache so the batch shrinks as it goes. Requests arriving meanwhile join the next batch.

Requests fail alone: a request the engine cannot run (a seed torch cannot take, a temperature too small
to divide by) is refused by :meth:`Engine.check_request` before it is queued, and when decoding a batch
raises anyway, each of its requests is decoded again on its own, so only the one at fault gets the error
(as :class:`GenerationFailed`, a 500) and the others their results.

Weight updates travel on the same queue, so they are ordered with the requests: a request submitted
before ``update_weights`` runs on the old weights, one submitted after runs on the new ones, and a batch
never mixes versions. Every result names the model version it ran on.

Shared weights (``shared=True``): the engine decodes with the trainer's own model object instead of a copy,
so one set of weights sits in memory. The trainer changes those weights in place, so it holds the engine
around each update: :meth:`Engine.pause` returns once the batch thread stands between batches (requests
keep queueing meanwhile), :meth:`Engine.resume` names the new version and lets the queue run on. A shared
engine never moves or casts the model; with a ``dtype`` it decodes under autocast instead.

Logprobs (what RL needs from the behaviour policy): ``log_softmax(logits / temperature)`` of the sampled
token, i.e. the temperature-scaled distribution *before* top-p truncation (a trainer can recompute it
from logits alone); for greedy decoding (temperature 0), ``log_softmax(logits)``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import inspect
import logging
import os
import queue
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from agentbolt.errors import AgentboltError, BadInput
from agentbolt.models import context_length, default_device, eos_token_ids, load_tokenizer_and_model, missing_weights
from agentbolt.types import MIN_TEMPERATURE, GenerationRequest, GenerationResult, GenerationTimings, TokenLogprob

log = logging.getLogger(__name__)


class EngineClosed(AgentboltError):
    """The engine was closed; it takes no more requests."""

    http_status = 503
    code = "engine_closed"


class GenerationFailed(AgentboltError):
    """Decoding one request raised an error no check foresaw (logged with its traceback)."""

    http_status = 500
    code = "generation_failed"


SEED_RANGE = (-(2**63), 2**64 - 1)  # what torch.Generator.manual_seed takes


@dataclass
class _Job:
    request: GenerationRequest
    future: asyncio.Future[GenerationResult]
    loop: asyncio.AbstractEventLoop
    submitted: float = field(default_factory=time.monotonic)


@dataclass
class _WeightsUpdate:
    state_dict: dict[str, torch.Tensor]
    version: int
    done: concurrent.futures.Future[int] = field(default_factory=concurrent.futures.Future)


@dataclass
class Pause:
    """A hold on the batch thread between two batches: made by :meth:`Engine.pause`, ended by :meth:`Engine.resume`."""

    held: threading.Event = field(default_factory=threading.Event)
    released: threading.Event = field(default_factory=threading.Event)


@dataclass
class _Sequence:
    """Decoding state of one request inside a batch."""

    job: _Job
    generator: torch.Generator | None
    stop_ids: frozenset[int]
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top: list[list[TokenLogprob]] = field(default_factory=list)
    finish_reason: str | None = None
    finished_at: float = 0.0


class Engine:
    """Serves generation requests from one model, batching the ones that arrive together.

    Args:
        model: a transformers causal LM (eval mode); moved to ``device``.
        tokenizer: its tokenizer (end-of-turn and padding ids; the gateway renders prompts with it).
        device: ``"cpu"``, ``"cuda"``...; default the first CUDA GPU if there is one, else the CPU.
        model_version: version of the weights ``model`` holds now.
        max_batch_size: most sequences decoded together.
        batch_wait_s: how long the first request of a batch waits for others to join it.
        dtype: ``"float32"``, ``"bfloat16"``, or ``"auto"`` (bfloat16 on CUDA, float32 elsewhere); None keeps
            the model's own dtype. The weights are cast to it, unless ``shared``: then it is the autocast dtype.
        shared: ``model`` is a trainer's model, updated in place between :meth:`pause` and :meth:`resume`; it must
            already be on ``device``, and is neither moved, cast nor switched to eval mode here.

    Raises:
        BadInput: an unknown dtype, or a shared model that is not on ``device``.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        device: str | None = None,
        model_version: int = 0,
        max_batch_size: int = 32,
        batch_wait_s: float = 0.005,
        dtype: str | None = None,
        shared: bool = False,
    ) -> None:
        self.device = default_device(device)
        self.shared = shared
        compute = resolve_dtype(dtype, self.device)
        self.autocast_dtype: torch.dtype | None = None
        if shared:
            on = {p.device for p in model.parameters()}
            if on != {self.device} and not (self.device.type == "cuda" and {d.type for d in on} == {"cuda"}):
                raise BadInput(f"a shared model must already be on the engine's device {self.device}, not {on}")
            weights = {p.dtype for p in model.parameters()}
            half = compute in (torch.bfloat16, torch.float16)
            self.autocast_dtype = compute if half and weights != {compute} else None
            self.model = model
        else:
            self.model = model.to(self.device, dtype=compute) if compute is not None else model.to(self.device)
            self.model.eval()
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.batch_wait_s = batch_wait_s
        self._version = model_version
        config = model.config
        self.vocab_size: int = config.vocab_size
        self.max_context = context_length(config)
        self.eos_token_ids = eos_token_ids(tokenizer, model)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(self.eos_token_ids, default=0)
        self.pad_token_id: int = int(pad)
        # transformers renamed `past_key_values` to `cache` (5.x); prefill needs only the last position's logits.
        # A PEFT model's forward takes **kwargs: its base model's signature tells what reaches the model.
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        params = inspect.signature(base.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self._last_logits_only = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
        self._queue: queue.Queue[_Job | _WeightsUpdate | Pause | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._closed = False

    @classmethod
    def load(cls, spec: str, **kwargs: Any) -> Engine:
        """An engine over the model named by ``spec`` (see :func:`load_tokenizer_and_model`)."""
        tokenizer, model = load_tokenizer_and_model(spec)
        return cls(model, tokenizer, **kwargs)

    @property
    def model_version(self) -> int:
        """Version of the weights the next batch will run on, once pending updates are applied."""
        return self._version

    # --- requests ------------------------------------------------------------------------------

    def check_request(self, request: GenerationRequest) -> None:
        """Raise :class:`BadInput` when ``request`` cannot run on this model (its size or sampling parameters)."""
        request.check_fits(self.max_context, self.vocab_size)
        if request.seed is not None and not SEED_RANGE[0] <= request.seed <= SEED_RANGE[1]:
            raise BadInput(
                f"seed {request.seed} is outside the range the engine takes, {SEED_RANGE[0]}..{SEED_RANGE[1]}"
            )
        if 0 < request.temperature < MIN_TEMPERATURE:
            raise BadInput(f"temperature {request.temperature} must be 0 (greedy) or at least {MIN_TEMPERATURE}")

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        """Generate a response to ``request``, batched with whatever other requests are in flight.

        Raises:
            BadInput: the request does not fit the model (context length, token ids, sampling parameters).
            EngineClosed: :meth:`close` was called.
            GenerationFailed: decoding this request raised (other requests of its batch are unaffected).
        """
        self.check_request(request)
        if self._closed:
            raise EngineClosed("the engine is closed")
        self._ensure_started()
        loop = asyncio.get_running_loop()
        job = _Job(request=request, future=loop.create_future(), loop=loop)
        self._queue.put(job)
        return await job.future

    def pause(self) -> Pause:
        """Hold the batch thread between batches; returns once it is held (the batch running now finishes first).

        Requests submitted meanwhile wait in the queue. Every pause must be ended with :meth:`resume`. This is
        how a trainer sharing the engine's model (``shared=True``) changes the weights in place safely.

        Raises:
            EngineClosed: the engine was closed.
        """
        if self._closed:
            raise EngineClosed("the engine is closed")
        hold = Pause()
        self._ensure_started()
        self._queue.put(hold)
        while not hold.held.wait(timeout=1.0):
            if self._thread is None or not self._thread.is_alive():
                raise EngineClosed("the engine stopped before it could pause")
        return hold

    def resume(self, hold: Pause, version: int | None = None) -> None:
        """End ``hold`` (from :meth:`pause`); with a ``version``, the weights are that model version from now on."""
        if version is not None:
            self._version = version
            log.info("engine now serves model version %d", version)
        hold.released.set()

    def update_weights(self, state_dict: Mapping[str, torch.Tensor], version: int) -> concurrent.futures.Future[int]:
        """Replace the model's weights with ``state_dict`` (a full state dict) as model ``version``.

        The tensors are copied now, so the caller may go on changing its own. The swap happens
        between batches: requests submitted before this call finish on the old weights, requests
        submitted after it run on the new ones. Returns a future that resolves to ``version``
        once the new weights are in place.

        Raises:
            BadInput: keys or shapes do not match the model's.
        """
        own = self.model.state_dict()
        missing = missing_weights(set(own) - set(state_dict), self.model.config)
        unexpected = set(state_dict) - set(own)
        wrong = [k for k in state_dict if k in own and tuple(state_dict[k].shape) != tuple(own[k].shape)]
        if missing or unexpected or wrong:
            raise BadInput(
                f"state dict does not fit the model: missing {missing[:5]}, "
                f"unexpected {sorted(unexpected)[:5]}, wrong shape {wrong[:5]}"
            )
        if self._closed:
            raise EngineClosed("the engine is closed")
        update = _WeightsUpdate({k: v.detach().to("cpu", copy=True) for k, v in state_dict.items()}, version)
        self._ensure_started()
        self._queue.put(update)
        return update.done

    def close(self) -> None:
        """Stop the batch thread after the work already queued; later requests raise EngineClosed."""
        self._closed = True
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the batch thread ----------------------------------------------------------------------

    def _ensure_started(self) -> None:
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name="agentbolt-engine", daemon=True)
                self._thread.start()

    def _serve(self) -> None:
        stopping = False
        while not stopping:
            item = self._queue.get()
            if item is None:
                break
            if isinstance(item, _WeightsUpdate):
                self._apply(item)
                continue
            if isinstance(item, Pause):
                self._hold(item)
                continue
            jobs, after = [item], None
            deadline = time.monotonic() + self.batch_wait_s
            while len(jobs) < self.max_batch_size:
                remaining = deadline - time.monotonic()
                try:
                    nxt = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stopping = True
                    break
                if isinstance(nxt, (_WeightsUpdate, Pause)):
                    after = nxt  # requests queued after it must see the new weights: close the batch
                    break
                jobs.append(nxt)
            self._run_batch([j for j in jobs if not j.future.cancelled()])
            if isinstance(after, _WeightsUpdate):
                self._apply(after)
            elif isinstance(after, Pause):
                self._hold(after)
        self._fail_queued()

    def _hold(self, hold: Pause) -> None:
        hold.held.set()
        hold.released.wait()

    def _apply(self, update: _WeightsUpdate) -> None:
        try:
            with torch.no_grad():
                self.model.load_state_dict(update.state_dict, strict=False)
            self._version = update.version
            log.info("engine now serves model version %d", update.version)
            update.done.set_result(update.version)
        except Exception as exc:
            log.exception("weight update to version %d failed", update.version)
            update.done.set_exception(exc)

    def _fail_queued(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, _Job):
                _deliver(item, EngineClosed("the engine was closed before this request ran"))
            elif isinstance(item, _WeightsUpdate):
                item.done.set_exception(EngineClosed("the engine was closed before the update was applied"))
            elif isinstance(item, Pause):
                item.held.set()  # nothing runs any more: the weights are the caller's to change

    def _run_batch(self, jobs: list[_Job]) -> None:
        if not jobs:
            return
        started = time.monotonic()
        try:
            seqs = self._decode(jobs)
        except Exception as exc:
            if len(jobs) == 1:
                log.exception("generation failed")
                _deliver(jobs[0], GenerationFailed(f"generation failed: {type(exc).__name__}: {exc}"))
                return
            # Find the request at fault: each one again on its own, so the others still get their results.
            log.warning(
                "batch of %d failed (%s: %s); decoding its requests one by one", len(jobs), type(exc).__name__, exc
            )
            for job in jobs:
                self._run_batch([job])
            return
        for seq in seqs:
            req = seq.job.request
            result = GenerationResult(
                response_token_ids=seq.tokens,
                logprobs=seq.logprobs,
                top_logprobs=seq.top if req.top_logprobs else None,
                finish_reason="stop" if seq.finish_reason == "stop" else "length",
                model_version=self._version,
                timings=GenerationTimings(
                    queued_s=started - seq.job.submitted,
                    generation_s=seq.finished_at - started,
                    batch_size=len(jobs),
                ),
            )
            _deliver(seq.job, result)

    def _decode(self, jobs: list[_Job]) -> list[_Sequence]:
        with torch.inference_mode(), self._autocast():
            return self._decode_batch(jobs)

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def _decode_batch(self, jobs: list[_Job]) -> list[_Sequence]:
        seqs = [
            _Sequence(
                job=job,
                generator=_generator(job.request, self.device),
                stop_ids=self.eos_token_ids | frozenset(job.request.stop_token_ids),
            )
            for job in jobs
        ]
        # Prefill: prompts left-padded to one length; positions count real tokens only.
        width = max(len(j.request.prompt_token_ids) for j in jobs)
        ids = torch.full((len(jobs), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(jobs), width), dtype=torch.long)
        for row, job in enumerate(jobs):
            prompt = job.request.prompt_token_ids
            ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
            mask[row, width - len(prompt) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(
            input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **self._last_logits_only
        )
        cache, logits = _cache_of(out), out.logits[:, -1, :].float()  # logits: (active, vocab)
        next_pos = mask.sum(-1)  # (active,)
        active = list(range(len(seqs)))  # cache row -> index into seqs
        while True:
            tokens = self._sample(logits, [seqs[i] for i in active])  # (active,)
            now = time.monotonic()
            keep: list[int] = []
            for row, i in enumerate(active):
                seq, token = seqs[i], int(tokens[row])
                if token in seq.stop_ids:
                    seq.finish_reason = "stop"
                elif len(seq.tokens) >= seq.job.request.max_new_tokens or seq.job.future.cancelled():
                    seq.finish_reason = "length"
                if seq.finish_reason is None:
                    keep.append(row)
                else:
                    seq.finished_at = now
            if not keep:
                return seqs
            if len(keep) < len(active):  # drop finished sequences from the batch and its KV cache
                index = torch.tensor(keep, device=self.device)
                cache.batch_select_indices(index)
                mask, next_pos, tokens = mask[index], next_pos[index], tokens[index]
                active = [active[r] for r in keep]
            mask = torch.cat([mask, mask.new_ones((len(active), 1))], dim=1)
            out = self.model(
                input_ids=tokens[:, None],
                attention_mask=mask,
                position_ids=next_pos[:, None],
                use_cache=True,
                **{self._cache_arg: cache},
            )
            cache, logits = _cache_of(out), out.logits[:, -1, :].float()
            next_pos = next_pos + 1

    def _sample(self, logits: torch.Tensor, seqs: list[_Sequence]) -> torch.Tensor:
        """Pick one token per row and record its logprob (and alternatives) on its sequence."""
        temps = torch.tensor([s.job.request.temperature or 1.0 for s in seqs], device=logits.device, dtype=logits.dtype)
        logp = torch.log_softmax(logits / temps[:, None], dim=-1)  # (rows, vocab)
        tokens = torch.empty(len(seqs), dtype=torch.long, device=logits.device)
        for row, seq in enumerate(seqs):
            req = seq.job.request
            if req.temperature == 0:
                token = int(torch.argmax(logits[row]))
            else:
                token = _sample_top_p(logp[row], req.top_p, seq.generator)
            tokens[row] = token
            seq.tokens.append(token)
            seq.logprobs.append(float(logp[row, token]))
            if req.top_logprobs:
                values, ids = torch.topk(logp[row], req.top_logprobs)
                seq.top.append(
                    [TokenLogprob(token_id=int(t), logprob=float(v)) for t, v in zip(ids, values, strict=True)]
                )
        return tokens


def _sample_top_p(logp: torch.Tensor, top_p: float, generator: torch.Generator | None) -> int:
    probs = logp.exp()
    if top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        outside = sorted_probs.cumsum(-1) - sorted_probs >= top_p  # tokens after the nucleus is full
        sorted_probs[outside] = 0.0
        pick = torch.multinomial(sorted_probs, 1, generator=generator)
        return int(order[pick])
    return int(torch.multinomial(probs, 1, generator=generator))


def _generator(request: GenerationRequest, device: torch.device) -> torch.Generator | None:
    if request.temperature == 0:
        return None
    seed = request.seed if request.seed is not None else int.from_bytes(os.urandom(8), "little") >> 1
    return torch.Generator(device=device).manual_seed(seed)


def _cache_of(out: Any) -> Any:
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def _deliver(job: _Job, outcome: GenerationResult | BaseException) -> None:
    def settle() -> None:
        if job.future.done():
            return
        if isinstance(outcome, BaseException):
            job.future.set_exception(outcome)
        else:
            job.future.set_result(outcome)

    try:
        job.loop.call_soon_threadsafe(settle)
    except RuntimeError:  # the caller's event loop is gone; nobody is waiting
        log.debug("dropped a result: its event loop is closed")


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(dtype: str | None, device: torch.device) -> torch.dtype | None:
    """The torch dtype a ``dtype`` setting names on ``device`` (``auto``: bfloat16 on CUDA, else float32).

    Raises:
        BadInput: an unknown name.
    """
    if dtype is None:
        return None
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in _DTYPES:
        raise BadInput(f"unknown dtype {dtype!r}: use auto, {', '.join(_DTYPES)}")
    return _DTYPES[dtype]
