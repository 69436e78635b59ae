"""The embedded inference engine: continuous batching over one PyTorch model, with weight hot-swap.

One background thread owns the model. ``Engine.generate`` (asyncio) puts a request on a queue and
awaits its result. The thread takes the first queued request, waits ``batch_wait_s`` for more to
arrive (up to ``max_batch_size``), prefills their prompts left-padded into one batch and decodes it step by
step with the KV cache (:mod:`agentbolt.engine.batch`): each step samples one token for every unfinished
sequence, each with its own temperature, top-p, stop ids, length limit and random generator
(:mod:`agentbolt.engine.sampling`). A sequence is answered as soon as it finishes, and leaves the batch
and its cache. Between two steps, requests queued meanwhile join the running batch while there is room:
their prompts are prefilled together, then their cache rows are added to the batch's (continuous
batching), so a multi-turn agent's next call does not wait for the batch its last one ran in. Identical
prompts admitted together (a GRPO group) are prefilled once and their cache rows copied. With
``continuous_batching=False`` the engine batches statically instead: requests arriving while a batch runs
wait for it to finish. So does a model whose cache cannot take rows mid-batch (sliding-window layers).

Requests fail alone: a request the engine cannot run (a seed torch cannot take, a temperature too small
to divide by) is refused by :meth:`Engine.check_request` before it is queued, and when a prefill or a
decode step raises anyway, each request it held that has no answer yet is decoded again on its own, so
only the one at fault gets the error (as :class:`GenerationFailed`, a 500) and the others their results.

Weight updates travel on the same queue, so they are ordered with the requests: a request submitted
before ``update_weights`` runs on the old weights, one submitted after runs on the new ones, and a batch
never mixes versions (once an update is queued, no request joins the running batch; it finishes, the
update is applied, then the queue runs on). Every result names the model version it ran on.

Shared weights (``shared=True``): the engine decodes with the trainer's own model object instead of a copy,
so one set of weights sits in memory. The trainer changes those weights in place, so it holds the engine
around each update: :meth:`Engine.pause` returns once the batch thread stands between batches (like an
update, a pause stops admission to the running batch; requests keep queueing meanwhile),
:meth:`Engine.resume` names the new version and lets the queue run on. A shared engine never moves or
casts the model; with a ``dtype`` it decodes under autocast instead.

Logprobs (what RL needs from the behaviour policy): ``log_softmax(logits / temperature)`` of the sampled
token, i.e. the temperature-scaled distribution *before* top-p truncation (a trainer can recompute it
from logits alone); for greedy decoding (temperature 0), ``log_softmax(logits)``.

Timings: ``queued_s`` runs from submission to the start of the request's prefill, ``generation_s`` from
there to its last token, and ``batch_size`` is the most sequences decoded together while it ran (the batch
it started in, grown by the requests that joined it).
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

from agentbolt.engine.batch import Batch, Job, Sequence, prefill
from agentbolt.engine.sampling import sample
from agentbolt.errors import AgentboltError, BadInput
from agentbolt.models import context_length, default_device, eos_token_ids, load_tokenizer_and_model, missing_weights
from agentbolt.types import MIN_TEMPERATURE, GenerationRequest, GenerationResult, GenerationTimings

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
class _WeightsUpdate:
    state_dict: dict[str, torch.Tensor]
    version: int
    done: concurrent.futures.Future[int] = field(default_factory=concurrent.futures.Future)


@dataclass
class Pause:
    """A hold on the batch thread between two batches: made by :meth:`Engine.pause`, ended by :meth:`Engine.resume`."""

    held: threading.Event = field(default_factory=threading.Event)
    released: threading.Event = field(default_factory=threading.Event)


class _Close:
    """Queued by :meth:`Engine.close`: the batch thread ends once the work queued before it is done."""


_Barrier = _WeightsUpdate | Pause | _Close  # what a running batch must finish before: no request joins it past one
_Item = Job | _Barrier


class Engine:
    """Serves generation requests from one model, batching the ones that are in flight together.

    Args:
        model: a transformers causal LM (eval mode); moved to ``device``.
        tokenizer: its tokenizer (end-of-turn and padding ids; the gateway renders prompts with it).
        device: ``"cpu"``, ``"cuda"``...; default the first CUDA GPU if there is one, else the CPU.
        model_version: version of the weights ``model`` holds now.
        max_batch_size: most sequences decoded together.
        batch_wait_s: how long the first request of a new batch waits for others to join it.
        dtype: ``"float32"``, ``"bfloat16"``, or ``"auto"`` (bfloat16 on CUDA, float32 elsewhere); None keeps
            the model's own dtype. The weights are cast to it, unless ``shared``: then it is the autocast dtype.
        shared: ``model`` is a trainer's model, updated in place between :meth:`pause` and :meth:`resume`; it must
            already be on ``device``, and is neither moved, cast nor switched to eval mode here.
        continuous_batching: requests queued while a batch runs join it between decode steps; False: they wait
            for it to finish (static batching).
        prefix_sharing: identical prompts admitted together are prefilled once.

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
        continuous_batching: bool = True,
        prefix_sharing: bool = True,
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
        self.continuous_batching = continuous_batching
        self.prefix_sharing = prefix_sharing
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
        self._queue: queue.Queue[_Item] = queue.Queue()
        self._barrier: _Barrier | None = None  # taken off the queue by the batch thread, waiting for its batch
        self._told_static = False  # logged once that this model's cache cannot take rows mid-batch
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
        job = Job(request=request, future=loop.create_future(), loop=loop)
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
            self._queue.put(_Close())
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
        while True:
            item = self._next()
            if isinstance(item, _Close):
                break
            if isinstance(item, _WeightsUpdate):
                self._apply(item)
            elif isinstance(item, Pause):
                self._hold(item)
            else:
                self._decode(self._gather(item), admit=self.continuous_batching)
        self._fail_queued()

    def _next(self, timeout: float | None = None) -> _Item:
        """The next item: a barrier held back first, then the queue's (timeout 0: only one already there).

        Raises:
            queue.Empty: nothing came within ``timeout``.
        """
        if self._barrier is not None:
            item, self._barrier = self._barrier, None
            return item
        if timeout is None:
            return self._queue.get()
        return self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()

    def _gather(self, first: Job) -> list[Job]:
        """``first`` and the requests that arrive within ``batch_wait_s``, up to the first barrier."""
        jobs = [first]
        deadline = time.monotonic() + self.batch_wait_s
        while len(jobs) < self.max_batch_size:
            try:
                item = self._next(timeout=max(deadline - time.monotonic(), 0.0))
            except queue.Empty:
                break
            if not isinstance(item, Job):
                self._barrier = item  # requests queued after it must see the new weights: close the batch
                break
            jobs.append(item)
        return [j for j in jobs if not j.future.cancelled()]

    def _admissions(self, room: int) -> list[Job]:
        """Requests queued meanwhile that join the running batch: up to ``room``, none past a barrier."""
        jobs: list[Job] = []
        while len(jobs) < room and self._barrier is None:
            try:
                item = self._next(timeout=0)
            except queue.Empty:
                break
            if not isinstance(item, Job):
                self._barrier = item
            elif not item.future.cancelled():
                jobs.append(item)
        return jobs

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
                item = self._next(timeout=0)
            except queue.Empty:
                return
            if isinstance(item, Job):
                _deliver(item, EngineClosed("the engine was closed before this request ran"))
            elif isinstance(item, _WeightsUpdate):
                item.done.set_exception(EngineClosed("the engine was closed before the update was applied"))
            elif isinstance(item, Pause):
                item.held.set()  # nothing runs any more: the weights are the caller's to change

    # --- decoding ------------------------------------------------------------------------------

    def _decode(self, jobs: list[Job], *, admit: bool) -> None:
        """Decode ``jobs`` together until every one is answered; with ``admit``, queued requests join between steps."""
        if not jobs:
            return
        with torch.inference_mode(), self._autocast():
            batch = self._join(jobs, None)
            while batch is not None:
                batch = self._advance(batch)
                if batch is not None and admit and self._joinable(batch):
                    joining = self._admissions(self.max_batch_size - len(batch.seqs))
                    if joining:
                        batch = self._join(joining, batch)

    def _join(self, jobs: list[Job], running: Batch | None) -> Batch | None:
        """Prefill ``jobs`` and sample their first tokens; returns them added to ``running``, or alone without one."""
        others = len(running.seqs) if running is not None else 0
        try:
            seqs = [self._sequence(job) for job in jobs]
            joining, logits = prefill(
                seqs,
                self._forward,
                pad_token_id=self.pad_token_id,
                device=self.device,
                share_prefixes=self.prefix_sharing,
            )
            self._take_tokens(joining, logits, others)
        except Exception as exc:
            self._recover(jobs, exc)
            return running
        if running is None or not running.seqs:
            return joining if joining.seqs else None
        if not joining.seqs:
            return running
        try:
            running.merge(joining)
        except Exception as exc:
            self._recover([s.job for s in running.seqs + joining.seqs], exc)
            return None
        return running

    def _advance(self, batch: Batch) -> Batch | None:
        """One decode step of ``batch``; returns it, or None once every sequence in it is answered."""
        try:
            logits = batch.step(self._forward)
            self._take_tokens(batch, logits, 0)
        except Exception as exc:
            self._recover([s.job for s in batch.seqs], exc)
            return None
        return batch if batch.seqs else None

    def _take_tokens(self, batch: Batch, logits: torch.Tensor, others: int) -> None:
        """Sample the next token of every row; answer the sequences that finish and drop them from ``batch``.

        ``others``: sequences of the running batch ``batch`` is about to join (they count in the batch size).
        """
        tokens = sample(logits, batch.seqs)
        now = time.monotonic()
        size = len(batch.seqs) + others
        keep: list[int] = []
        for row, seq in enumerate(batch.seqs):
            seq.batch_size = max(seq.batch_size, size)
            if seq.finished(now):
                self._answer(seq)
            else:
                keep.append(row)
        batch.keep(keep, tokens)

    def _recover(self, jobs: list[Job], exc: Exception) -> None:
        """After decoding ``jobs`` together raised ``exc``: each unanswered one again on its own."""
        jobs = [j for j in jobs if not j.answered and not j.future.cancelled()]
        if not jobs:
            return
        if len(jobs) == 1:
            log.error("generation failed", exc_info=exc)
            _deliver(jobs[0], GenerationFailed(f"generation failed: {type(exc).__name__}: {exc}"))
            return
        # Find the request at fault: each one again on its own, so the others still get their results.
        log.warning("batch of %d failed (%s: %s); decoding its requests one by one", len(jobs), type(exc).__name__, exc)
        for job in jobs:
            self._decode([job], admit=False)

    def _joinable(self, batch: Batch) -> bool:
        if not batch.joinable and not self._told_static:
            self._told_static = True
            log.info("this model's KV cache cannot take rows mid-batch: its requests are batched statically")
        return batch.joinable

    def _sequence(self, job: Job) -> Sequence:
        return Sequence(
            job=job,
            generator=_generator(job.request, self.device),
            stop_ids=self.eos_token_ids | frozenset(job.request.stop_token_ids),
            admitted=time.monotonic(),
        )

    def _forward(
        self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: Any
    ) -> tuple[torch.Tensor, Any]:
        extra = {self._cache_arg: cache} if cache is not None else self._last_logits_only
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **extra)
        return out.logits[:, -1, :].float(), _cache_of(out)

    def _answer(self, seq: Sequence) -> None:
        req = seq.job.request
        result = GenerationResult(
            response_token_ids=seq.tokens,
            logprobs=seq.logprobs,
            top_logprobs=seq.top if req.top_logprobs else None,
            finish_reason="stop" if seq.finish_reason == "stop" else "length",
            model_version=self._version,
            timings=GenerationTimings(
                queued_s=seq.admitted - seq.job.submitted,
                generation_s=seq.finished_at - seq.admitted,
                batch_size=seq.batch_size,
            ),
        )
        _deliver(seq.job, result)

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)


def _generator(request: GenerationRequest, device: torch.device) -> torch.Generator | None:
    if request.temperature == 0:
        return None
    seed = request.seed if request.seed is not None else int.from_bytes(os.urandom(8), "little") >> 1
    return torch.Generator(device=device).manual_seed(seed)


def _cache_of(out: Any) -> Any:
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def _deliver(job: Job, outcome: GenerationResult | BaseException) -> None:
    job.answered = True

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
