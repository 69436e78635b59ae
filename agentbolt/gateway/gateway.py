"""The gateway's core: what outlives a call, and the stages every call shares.

:class:`Gateway` holds the served models, span recorder, attempt gate, fidelity tracker and counters. It
serves the policy model and, optionally, fixed models: models agents may call by name (e.g. the untrained
agents of a multi-agent system) whose calls are traced like the policy's but marked ``agentbolt.llm.fixed``,
so the adapter never trains on them.

A call is prepared first by ``serving_chat`` or ``serving_completion`` (everything that can refuse it,
before any generation: a refused call costs no compute and stores nothing), using :meth:`Gateway.admit`,
:meth:`Gateway.max_new_tokens` and :meth:`Gateway.generation_requests`; then :meth:`Gateway.generate`
generates it (``n`` requests submitted together, so the engine batches them) and records it (one span per
choice, built by ``llm_spans``, handed to the batching recorder; with ``answer`` span durability the call
returns once they are stored, see ``recorder.py``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from fastapi import Request

from agentbolt.errors import BadInput
from agentbolt.gateway.attribution import AttemptGate, CallContext
from agentbolt.gateway.backend import Backend
from agentbolt.gateway.call import Choice, Prepared, Served
from agentbolt.gateway.errors import GatewayError
from agentbolt.gateway.fidelity import FidelityTracker, MessageKey, Turn, message_key
from agentbolt.gateway.llm_spans import llm_call_spans
from agentbolt.gateway.recorder import SpanRecorder
from agentbolt.gateway.text import TokenText, response_text
from agentbolt.gateway.tools import choose_tool_format, parse_tool_calls
from agentbolt.store import Store
from agentbolt.types import ChatCompletionRequest, CompletionRequest, GenerationRequest, GenerationResult, ServerConfig
from agentbolt.types.base import SpanDurability
from agentbolt.types.config import SpanDurabilitySetting

_MAX_RAW_REPLIES = 100_000  # tool-call replies remembered for re-rendering (oldest forgotten first)
# A prompt of more characters than this many per token of context cannot fit (a token of ordinary text is
# 3-5 characters; long runs of spaces or symbols pack more into one): it is refused before it is tokenized.
MAX_CHARS_PER_TOKEN = 16
# Prompts longer than this (characters) are rendered and tokenized on a worker thread, not the event loop.
OFF_LOOP_CHARS = 20_000

logger = logging.getLogger(__name__)


class Gateway:
    """The OpenAI-compatible gateway's state and the call stages shared by chat and text completions.

    It is also the server's attempt-finish hook (``agentbolt.server.queue.AttemptFinishHook``):
    :meth:`before_finish` stores the attempt's pending spans, :meth:`after_finish` closes its calls.

    ``span_durability`` is ``config.span_durability`` with ``auto`` resolved for ``store``
    (:func:`span_durability_for`).

    Args:
        backend: the policy model the gateway serves.
        store: where spans go.
        config: the server's settings (``require_attempt``, ``strict_token_fidelity``, ``max_n``,
            ``tool_format``...).
        fixed: fixed models served beside the policy, each under its own ``model_name``.

    Raises:
        BadInput: two models share a name.
    """

    def __init__(self, backend: Backend, store: Store, config: ServerConfig, fixed: Sequence[Backend] = ()) -> None:
        self.backend = backend
        self.models: dict[str, Served] = {}
        for b in (backend, *fixed):
            if b.model_name in self.models:
                raise BadInput(f"two served models are named {b.model_name!r}: give each its own name")
            # Each served model's tool format: config.tool_format, or its family's when "auto".
            tool_format, why = choose_tool_format(config.tool_format, b.tokenizer)
            logger.info("model %r: tools in the %s format (%s)", b.model_name, tool_format, why)
            self.models[b.model_name] = Served(b, TokenText(b.tokenizer), b is not backend, tool_format)
        self.config = config
        self.store = store
        self.recorder = SpanRecorder(store, interval_s=config.span_flush_interval_s)
        self.span_durability = span_durability_for(config.span_durability, store)
        logger.info("gateway spans are durable by the %s (store: %s)", self.span_durability, store.backend)
        self.gate = AttemptGate(store)
        self.fidelity = FidelityTracker()
        self.fidelity_refused: Counter[str] = Counter()  # strict-mode refusals per rollout (never stored)
        self.started = int(time.time())
        self.calls = 0
        self.refused = 0
        # Tool call id -> (the model's raw text, the calls as parsed): lets a later prompt repeat the
        # model's own text for an assistant turn instead of a re-rendering of its tool calls.
        self._raw_replies: OrderedDict[str, tuple[str, MessageKey]] = OrderedDict()

    # --- lifecycle ----------------------------------------------------------------------------------

    def start(self) -> None:
        self.recorder.start()

    async def aclose(self) -> None:
        """Write every pending span and stop the recorder (the backend belongs to whoever made it)."""
        await self.recorder.aclose()

    async def before_finish(self, rollout_id: str, attempt_id: str) -> None:
        """Before the server ends an attempt: store its spans still waiting for their batched write.

        With ``finish`` durability these are the spans of its calls answered by this process; with
        ``answer`` durability only those of a call whose client went away before its answer.
        """
        await self.recorder.flush(attempt_id)

    async def after_finish(self, rollout_id: str, attempt_id: str) -> None:
        """After the server ended an attempt: its later calls get 409, its fidelity history is dropped."""
        self.gate.finished(rollout_id, attempt_id)
        self.fidelity.forget(attempt_id)

    # --- preparing: the checks every call passes before it generates ----------------------------------

    async def admit(self, context: CallContext, model: str) -> Served:
        """The served model named ``model``, if the call's attempt may still call.

        Raises:
            GatewayError: 404 unknown model, 403 no attempt named on a server that requires one, 409 the
                attempt has finished.
            NotFound: no such rollout or attempt.
        """
        served = self.models.get(model)
        if served is None:
            names = ", ".join(repr(name) for name in self.models)
            raise GatewayError(
                f"model {model!r} is not served here; this gateway serves {names} (GET /v1/models)",
                status=404,
                code="model_not_found",
                param="model",
            )
        if context.attempt_id is None:
            if self.config.require_attempt:
                raise GatewayError(
                    "this server records only calls that belong to a rollout attempt: use the base URL "
                    "/rollouts/{rollout_id}/attempts/{attempt_id}/v1 (or the X-Agentbolt-Rollout-Id and "
                    "X-Agentbolt-Attempt-Id headers)",
                    status=403,
                    code="attempt_required",
                )
            return served
        assert context.rollout_id is not None
        await self.gate.check(context.rollout_id, context.attempt_id)
        return served

    def check_n(self, n: int) -> None:
        """Raise GatewayError (400, ``param`` n) when ``n`` is above the server's ``max_n``."""
        if n > self.config.max_n:
            raise GatewayError(f"n is {n}, above this server's limit of {self.config.max_n}", param="n")

    def check_prompt_chars(self, served: Served, chars: int, param: str) -> None:
        """Refuse a prompt of ``chars`` characters that cannot fit the context, before it is tokenized.

        Raises:
            GatewayError: 400 ``context_length_exceeded`` naming the limit.
        """
        max_context = served.backend.max_context
        limit = MAX_CHARS_PER_TOKEN * max_context
        if chars > limit:
            raise GatewayError(
                f"the prompt has {chars} characters, more than can fit the model's context of {max_context} tokens "
                f"(this gateway refuses prompts over {limit} characters, {MAX_CHARS_PER_TOKEN} per token of context, "
                "before tokenizing them): shorten the conversation",
                param=param,
                code="context_length_exceeded",
            )

    async def tokenize(self, chars: int, encode: Callable[..., list[int]], *args: Any, **kwargs: Any) -> list[int]:
        """``encode(*args, **kwargs)``: on a worker thread for a prompt over ``OFF_LOOP_CHARS`` characters
        (long to tokenize: other calls run meanwhile), inline otherwise (a thread costs more than it saves)."""
        if chars > OFF_LOOP_CHARS:
            return await asyncio.to_thread(encode, *args, **kwargs)
        return encode(*args, **kwargs)

    def max_new_tokens(self, served: Served, prompt_ids: list[int], max_tokens: int | None, default_max: int) -> int:
        """How many tokens each choice may generate: ``max_tokens``, else what fits up to ``default_max``.

        Raises:
            GatewayError: prompt and ``max_tokens`` over the model's context (code ``context_length_exceeded``).
        """
        max_context = served.backend.max_context
        room = max_context - len(prompt_ids)
        if room < 1:
            raise GatewayError(
                f"the prompt has {len(prompt_ids)} tokens; the model's context holds {max_context} "
                "tokens (prompt and response together): shorten the conversation",
                param="messages",
                code="context_length_exceeded",
            )
        if max_tokens is None:
            return min(default_max, room)
        if max_tokens > room:
            raise GatewayError(
                f"the prompt has {len(prompt_ids)} tokens and max_tokens is {max_tokens}: together more than the "
                f"model's context of {max_context} tokens; lower max_tokens to at most {room}",
                param="max_tokens",
                code="context_length_exceeded",
            )
        return max_tokens

    def generation_requests(
        self,
        served: Served,
        req: ChatCompletionRequest | CompletionRequest,
        prompt_ids: list[int],
        max_new: int,
        top_logprobs: int,
        stops: list[str],
    ) -> list[GenerationRequest]:
        """The ``n`` engine requests of a call (seeds ``seed + i``), checked against the backend.

        Raises:
            GatewayError: a sampling parameter the engine does not implement, or one the backend refuses.
        """
        for name in ("frequency_penalty", "presence_penalty"):
            if getattr(req, name):
                raise GatewayError(f"{name} is not supported (only 0)", param=name, code="unsupported_parameter")
        if req.logit_bias:
            raise GatewayError("logit_bias is not supported", param="logit_bias", code="unsupported_parameter")
        # A stop string that is one token lets the engine stop right there instead of running on.
        stop_ids = sorted({ids[0] for s in stops if len(ids := served.text.encode(s, special_tokens=False)) == 1})
        requests = [
            GenerationRequest(
                prompt_token_ids=prompt_ids,
                max_new_tokens=max_new,
                temperature=1.0 if req.temperature is None else req.temperature,
                top_p=1.0 if req.top_p is None else req.top_p,
                stop_token_ids=stop_ids,
                seed=None if req.seed is None else req.seed + i,
                top_logprobs=top_logprobs,
            )
            for i in range(req.n)
        ]
        try:
            served.backend.check_request(requests[0])
        except BadInput as exc:
            param = "messages" if isinstance(req, ChatCompletionRequest) else "prompt"
            raise GatewayError(str(exc), param=param) from None
        return requests

    def check_fidelity(
        self, context: CallContext, messages: list[dict[str, Any]], prompt_ids: list[int]
    ) -> tuple[tuple[MessageKey, ...] | None, bool | None]:
        """(message keys, fidelity mismatch) of a chat call: both None outside an attempt (see fidelity.py).

        Raises:
            GatewayError: 409, a mismatch on a server with ``strict_token_fidelity``.
        """
        if context.attempt_id is None:
            return None, None
        keys = tuple(message_key(m) for m in messages)
        mismatch = self.fidelity.check(context.attempt_id, keys, prompt_ids)
        if mismatch and self.config.strict_token_fidelity:
            assert context.rollout_id is not None
            self.fidelity_refused[context.rollout_id] += 1
            raise GatewayError(
                "token fidelity: this conversation extends the attempt's previous call, but its prompt token ids "
                "do not start with that call's prompt and response ids (the chat template re-renders earlier "
                "turns differently, or the history was edited). The server runs with --strict-token-fidelity.",
                status=409,
                code="token_fidelity_mismatch",
                param="messages",
            )
        return keys, mismatch

    # --- generating and recording -------------------------------------------------------------------

    async def generate(self, call: Prepared) -> list[Choice]:
        """Generate the call's choices together, record one span per choice, and return them.

        With ``answer`` span durability it returns once the spans are stored (or dropped for good: counted
        in ``recorder.dropped`` and logged; the call is answered all the same); with ``finish``, at once.

        Raises:
            BadInput, UpstreamError, EngineClosed: the backend failed; nothing is recorded.
        """
        affinity = call.context.rollout_id
        backend = call.served.backend
        results = await asyncio.gather(*(backend.generate(r, affinity=affinity) for r in call.requests))
        ended = time.time_ns()
        choices = [self._choice(i, result, call) for i, result in enumerate(results)]
        self.calls += 1
        spans = llm_call_spans(call, choices, ended)
        if call.context.attempt_id is not None and call.message_keys is not None:
            replies = tuple((message_key(c.message()), c.token_ids[: c.response.text_tokens]) for c in choices)
            self.fidelity.remember(call.context.attempt_id, Turn(call.message_keys, call.prompt_ids, replies))
        for c in choices:
            if c.tool_calls:
                self._remember_raw(c)
        if self.span_durability == "answer":
            await self.recorder.record(call.context.attempt_id, spans)
        else:
            self.recorder.add(call.context.attempt_id, spans)
        return choices

    def _choice(self, index: int, result: GenerationResult, call: Prepared) -> Choice:
        served = call.served
        response = response_text(served.text, result.response_token_ids, served.backend.eos_token_ids, call.stops)
        finish: str = "stop" if response.stopped else result.finish_reason
        content: str | None = response.text
        tool_calls: list[dict[str, Any]] = []
        malformed = None
        if call.tools:
            parsed = parse_tool_calls(response.text, call.tools, served.tool_format)
            content, tool_calls, malformed = parsed.content, parsed.tool_calls, parsed.malformed
            if tool_calls:
                finish = "tool_calls"
        return Choice(index, result, response, content, tool_calls, malformed, finish)

    # --- raw replies, for rendering assistant tool-call turns as the model wrote them -------------------

    def _remember_raw(self, choice: Choice) -> None:
        key = message_key(choice.message())
        for call in choice.tool_calls:
            self._raw_replies[call["id"]] = (choice.response.text, key)
        while len(self._raw_replies) > _MAX_RAW_REPLIES:
            self._raw_replies.popitem(last=False)

    def recall(self, message: Mapping[str, Any]) -> str | None:
        """The model's own text of an assistant tool-call turn it wrote, unless the turn was edited since."""
        calls = message.get("tool_calls") or []
        if not calls:
            return None
        remembered = self._raw_replies.get(calls[0].get("id", ""))
        if remembered is None or remembered[1] != message_key(message):
            return None  # not ours, or edited since: render it from its fields
        return remembered[0]


def span_durability_for(setting: SpanDurabilitySetting, store: Store) -> SpanDurability:
    """The span durability ``setting`` means on ``store``: ``auto`` is ``answer`` on PostgreSQL, where other
    server processes may end an attempt whose calls this one answered, and ``finish`` on SQLite, which one
    process serves alone (its finish hook flushes, and no call waits for a commit)."""
    if setting != "auto":
        return setting
    return "answer" if store.backend == "postgresql" else "finish"


def gateway_of(request: Request) -> Gateway:
    """The gateway of the app serving ``request`` (``create_app`` puts it in ``app.state.gateway``).

    Raises:
        GatewayError: 404, the server runs no model.
    """
    gateway: Gateway | None = getattr(request.app.state, "gateway", None)
    if gateway is None:
        raise GatewayError(
            "this server runs no model: start it with agentbolt serve --model ...", status=404, code="model_not_found"
        )
    return gateway
