"""One gateway call, from request body to generated choices and their spans.

:class:`Gateway` holds what outlives a call (the served models, span recorder, attempt gate, fidelity
tracker, counters). It serves the policy model and, optionally, fixed models: models agents may call by name
(e.g. the untrained agents of a multi-agent system) whose calls are traced like the policy's but marked
``agentbolt.llm.fixed``, so the adapter never trains on them.

A call is prepared first (everything that can refuse it, before any generation: a refused call costs no
compute and stores nothing), then generated (``n`` requests submitted together, so the
engine batches them), then recorded (one span per choice, handed to the batching recorder).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import Counter, OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import ValidationError

from agentbolt import semconv
from agentbolt.errors import BadInput
from agentbolt.gateway.attribution import AttemptGate, CallContext
from agentbolt.gateway.backend import Backend
from agentbolt.gateway.errors import GatewayError
from agentbolt.gateway.fidelity import FidelityTracker, MessageKey, Turn, message_key
from agentbolt.gateway.recorder import SpanRecorder
from agentbolt.gateway.text import ResponseText, TokenText, response_text
from agentbolt.gateway.tools import active_tools, parse_tool_calls, render_tool_messages
from agentbolt.store import Store
from agentbolt.types import (
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    GenerationRequest,
    GenerationResult,
    ServerConfig,
    SpanIn,
    SpanStatus,
    SpanStatusCode,
)

Operation = Literal["chat", "text_completion"]

# Parameters of OpenAI's API that a local text model cannot honour: refused by name, with what to do.
_UNSUPPORTED: dict[str, str] = {
    "functions": "'functions' is the deprecated form of tool calling: send 'tools' instead",
    "function_call": "'function_call' is deprecated: send 'tool_choice' instead",
    "audio": "audio output is not supported: this gateway serves a text model",
    "prediction": "predicted outputs are not supported",
    "web_search_options": "web search is not supported",
}
_COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's (and vLLM's) default for the legacy completions API


@dataclass
class Served:
    """One model the gateway serves: its backend and its tokenizer's text helper."""

    backend: Backend
    text: TokenText
    fixed: bool  # a fixed model: traced, never trained (the policy is the one model that is not fixed)

    @property
    def system(self) -> str:
        return str(getattr(self.backend, "system", "openai"))


@dataclass
class Prepared:
    """A call that passed every check, ready to generate."""

    operation: Operation
    served: Served
    context: CallContext
    request_model: str
    input_messages: Any  # the request's messages (chat) or prompt (completions), for the span
    message_keys: tuple[MessageKey, ...] | None  # chat calls inside an attempt: for the fidelity check
    prompt_ids: list[int]
    requests: list[GenerationRequest]
    stops: list[str]
    tools: list[dict[str, Any]] | None  # tools the reply is parsed for
    logprobs: bool
    stream: bool
    include_usage: bool
    fidelity_mismatch: bool | None
    span_params: dict[str, Any]
    response_id: str = field(default_factory=lambda: os.urandom(12).hex())
    created: int = field(default_factory=lambda: int(time.time()))


@dataclass
class Choice:
    """One generated choice, as returned and as recorded."""

    index: int
    result: GenerationResult
    response: ResponseText
    content: str | None
    tool_calls: list[dict[str, Any]]
    malformed: str | None
    finish_reason: str

    @property
    def token_ids(self) -> list[int]:
        return self.response.token_ids

    @property
    def logprobs(self) -> list[float]:
        return self.result.logprobs[: len(self.response.token_ids)]

    def message(self) -> dict[str, Any]:
        """The assistant message of this choice (OpenAI shape)."""
        out: dict[str, Any] = {"role": "assistant", "content": self.content}
        if self.tool_calls:
            out["tool_calls"] = self.tool_calls
        return out


def _validate(model: type[ChatCompletionRequest] | type[CompletionRequest], body: Any) -> Any:
    """``body`` validated as ``model``; GatewayError (400, naming the field) when it is not valid."""
    if not isinstance(body, dict):
        raise GatewayError("the request body must be a JSON object")
    for key, why in _UNSUPPORTED.items():
        if body.get(key) is not None:
            raise GatewayError(why, param=key, code="unsupported_parameter")
    modalities = body.get("modalities")
    if modalities is not None:
        if modalities != ["text"]:
            raise GatewayError("only text output is supported: modalities must be ['text']", param="modalities")
        body = {k: v for k, v in body.items() if k != "modalities"}
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        # Of the alternatives a union reports, the most telling: our own checks, then unknown fields.
        errors = sorted(exc.errors(), key=lambda e: {"value_error": 0, "extra_forbidden": 1}.get(e["type"], 2))
        error = errors[0]
        loc = [str(p) for p in error.get("loc", ()) if not _is_union_tag(p)]
        param = ".".join(loc) or None
        if error.get("type") == "extra_forbidden":
            raise GatewayError(
                f"unsupported parameter {param!r}: the agentbolt gateway does not implement it",
                param=param,
                code="unsupported_parameter",
            ) from None
        message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
        raise GatewayError(f"invalid {param or 'request'}: {message}", param=param) from None


_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "dict", "list", "none"})


def _is_union_tag(part: object) -> bool:
    """Whether a pydantic error location part names a union alternative rather than a field."""
    return isinstance(part, str) and (part in _TYPE_TAGS or "[" in part or "-" in part)


class Gateway:
    """The OpenAI-compatible gateway's state and call pipeline.

    Args:
        backend: the policy model the gateway serves.
        store: where spans go.
        config: the server's settings (``require_attempt``, ``strict_token_fidelity``, ``max_n``...).
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
            self.models[b.model_name] = Served(b, TokenText(b.tokenizer), fixed=b is not backend)
        self.config = config
        self.store = store
        self.recorder = SpanRecorder(store, interval_s=config.span_flush_interval_s)
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

    def attempt_finished(self, rollout_id: str, attempt_id: str) -> None:
        """Called by the finish route once an attempt ended (after flushing its spans): later calls get 409."""
        self.gate.finished(rollout_id, attempt_id)
        self.fidelity.forget(attempt_id)

    # --- preparing --------------------------------------------------------------------------------

    async def _admit(self, context: CallContext, model: str) -> Served:
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

    def _limits(
        self, served: Served, n: int, prompt_ids: list[int], max_tokens: int | None, default_max: int
    ) -> int:
        if n > self.config.max_n:
            raise GatewayError(f"n is {n}, above this server's limit of {self.config.max_n}", param="n")
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

    def _generation_requests(
        self,
        served: Served,
        req: ChatCompletionRequest | CompletionRequest,
        prompt_ids: list[int],
        max_new: int,
        top_logprobs: int,
        stops: list[str],
    ) -> list[GenerationRequest]:
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

    async def prepare_chat(self, body: Any, context: CallContext) -> Prepared:
        """Validate a chat request and turn it into generation requests.

        Raises:
            GatewayError, NotFound: the call is refused (4xx); nothing is generated or stored.
        """
        req: ChatCompletionRequest = _validate(ChatCompletionRequest, body)
        served = await self._admit(context, req.model)
        if req.response_format is not None and req.response_format.type != "text":
            raise GatewayError(
                f"response_format {req.response_format.type!r} needs constrained decoding, which this engine does not "
                "do: ask for JSON in the prompt and parse the reply, or use tools",
                param="response_format",
                code="unsupported_parameter",
            )
        if req.top_logprobs and not req.logprobs:
            raise GatewayError("top_logprobs needs logprobs set to true", param="top_logprobs")
        messages = [_message_dict(m) for m in req.messages]
        tools = [t.model_dump(exclude_none=True) for t in req.tools] if req.tools else None
        tool_choice = (
            req.tool_choice.model_dump()
            if req.tool_choice is not None and not isinstance(req.tool_choice, str)
            else req.tool_choice
        )
        try:
            parse_for = active_tools(tools, tool_choice)
            if tools or any(m["role"] == "tool" or "tool_calls" in m for m in messages):
                rendered = render_tool_messages(messages, tools, tool_choice, recall=self._recall)
            else:
                rendered = [
                    {"role": "system" if m["role"] == "developer" else m["role"], "content": m["content"]}
                    for m in messages
                ]
        except BadInput as exc:
            raise GatewayError(str(exc), param="messages") from None
        try:
            prompt_ids = served.text.chat_prompt(rendered)
        except Exception as exc:  # the model's own Jinja template refused (e.g. roles must alternate)
            raise GatewayError(
                f"the model's chat template cannot render these messages: {exc}", param="messages"
            ) from None
        max_new = self._limits(
            served, req.n, prompt_ids, req.max_completion_tokens or req.max_tokens, self.config.default_max_tokens
        )
        stops = req.stop_strings()
        requests = self._generation_requests(served, req, prompt_ids, max_new, req.top_logprobs or 0, stops)
        keys, mismatch = None, None
        if context.attempt_id is not None:
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
        return Prepared(
            operation="chat",
            served=served,
            context=context,
            request_model=req.model,
            input_messages=messages,
            message_keys=keys,
            prompt_ids=prompt_ids,
            requests=requests,
            stops=stops,
            tools=parse_for,
            logprobs=req.logprobs,
            stream=req.stream,
            include_usage=bool(req.stream_options and req.stream_options.include_usage),
            fidelity_mismatch=mismatch,
            span_params=_span_params(req, max_new),
        )

    async def prepare_completion(self, body: Any, context: CallContext) -> Prepared:
        """Validate a text-completion request (one prompt: text or token ids).

        Raises:
            GatewayError, NotFound: the call is refused (4xx); nothing is generated or stored.
        """
        if isinstance(body, dict) and isinstance(body.get("prompt"), list) and body["prompt"]:
            if not all(isinstance(p, int) and not isinstance(p, bool) for p in body["prompt"]):
                raise GatewayError(
                    "prompt must be one string or one list of token ids (batches of prompts are not supported: "
                    "send one request per prompt, or use n)",
                    param="prompt",
                )
        req: CompletionRequest = _validate(CompletionRequest, body)
        served = await self._admit(context, req.model)
        for name, ok in (
            ("echo", not req.echo),
            ("suffix", req.suffix is None),
            ("best_of", req.best_of in (None, req.n)),
        ):
            if not ok:
                raise GatewayError(f"{name} is not supported", param=name, code="unsupported_parameter")
        prompt_ids = served.text.encode(req.prompt, special_tokens=True) if isinstance(req.prompt, str) else req.prompt
        if not prompt_ids:
            raise GatewayError("the prompt is empty", param="prompt")
        max_new = self._limits(served, req.n, list(prompt_ids), req.max_tokens, _COMPLETIONS_DEFAULT_MAX_TOKENS)
        stops = req.stop_strings()
        requests = self._generation_requests(served, req, list(prompt_ids), max_new, req.logprobs or 0, stops)
        return Prepared(
            operation="text_completion",
            served=served,
            context=context,
            request_model=req.model,
            input_messages=req.prompt,
            message_keys=None,
            prompt_ids=list(prompt_ids),
            requests=requests,
            stops=stops,
            tools=None,
            logprobs=req.logprobs is not None,
            stream=req.stream,
            include_usage=bool(req.stream_options and req.stream_options.include_usage),
            fidelity_mismatch=None,
            span_params=_span_params(req, max_new),
        )

    # --- generating and recording -------------------------------------------------------------------

    async def generate(self, call: Prepared) -> list[Choice]:
        """Generate the call's choices together, record one span per choice, and return them.

        Raises:
            BadInput, UpstreamError, EngineClosed: the backend failed; nothing is recorded.
        """
        affinity = call.context.rollout_id
        backend = call.served.backend
        results = await asyncio.gather(*(backend.generate(r, affinity=affinity) for r in call.requests))
        ended = time.time_ns()
        choices = [self._choice(i, result, call) for i, result in enumerate(results)]
        self.calls += 1
        self._record(call, choices, ended)
        if call.context.attempt_id is not None and call.message_keys is not None:
            replies = tuple((message_key(c.message()), c.token_ids[: c.response.text_tokens]) for c in choices)
            self.fidelity.remember(call.context.attempt_id, Turn(call.message_keys, call.prompt_ids, replies))
        for c in choices:
            if c.tool_calls:
                self._remember_raw(c)
        return choices

    def _choice(self, index: int, result: GenerationResult, call: Prepared) -> Choice:
        served = call.served
        response = response_text(served.text, result.response_token_ids, served.backend.eos_token_ids, call.stops)
        finish: str = "stop" if response.stopped else result.finish_reason
        content: str | None = response.text
        tool_calls: list[dict[str, Any]] = []
        malformed = None
        if call.tools:
            parsed = parse_tool_calls(response.text, call.tools)
            content, tool_calls, malformed = parsed.content, parsed.tool_calls, parsed.malformed
            if tool_calls:
                finish = "tool_calls"
        return Choice(index, result, response, content, tool_calls, malformed, finish)

    def _record(self, call: Prepared, choices: list[Choice], ended_ns: int) -> None:
        context = call.context
        latency = (ended_ns - context.received_ns) / 1e9
        model_name = call.served.backend.model_name
        system = call.served.system
        fixed = call.served.fixed

        def build() -> list[SpanIn]:
            # Runs in the recorder's writer, not on the response path.
            input_json = json.dumps(call.input_messages, ensure_ascii=False)
            spans = []
            for c in choices:
                attributes: dict[str, Any] = {
                    semconv.GEN_AI_OPERATION: call.operation,
                    semconv.GEN_AI_SYSTEM: system,
                    semconv.GEN_AI_REQUEST_MODEL: call.request_model,
                    **call.span_params,
                    semconv.GEN_AI_RESPONSE_ID: call.response_id,
                    semconv.GEN_AI_RESPONSE_MODEL: model_name,
                    semconv.GEN_AI_RESPONSE_FINISH_REASONS: [c.finish_reason],
                    semconv.GEN_AI_USAGE_INPUT_TOKENS: len(call.prompt_ids),
                    semconv.GEN_AI_USAGE_OUTPUT_TOKENS: len(c.token_ids),
                    semconv.GEN_AI_INPUT_MESSAGES: input_json,
                    semconv.GEN_AI_OUTPUT_MESSAGES: json.dumps([c.message()], ensure_ascii=False),
                    semconv.LLM_PROMPT_TOKEN_IDS: call.prompt_ids,
                    semconv.LLM_RESPONSE_TOKEN_IDS: c.token_ids,
                    semconv.LLM_RESPONSE_LOGPROBS: c.logprobs,
                    semconv.LLM_MODEL_VERSION: c.result.model_version,
                    semconv.LLM_TOKEN_SOURCE: c.result.token_source,
                    semconv.LLM_CHOICE_INDEX: c.index,
                    semconv.LLM_LATENCY_S: latency,
                    semconv.LLM_STREAM: call.stream,
                }
                if c.result.token_drift is not None:
                    attributes[semconv.LLM_TOKEN_DRIFT] = c.result.token_drift
                if call.tools:
                    attributes[semconv.LLM_TOOL_CALL_MALFORMED] = c.malformed is not None
                if c.tool_calls:
                    attributes[semconv.LLM_TOOL_CALLS] = json.dumps(c.tool_calls, ensure_ascii=False)
                if c.malformed is not None:
                    attributes[semconv.LLM_TOOL_CALL_ERROR] = c.malformed
                if context.agent_name:
                    attributes[semconv.LLM_AGENT_NAME] = context.agent_name
                if call.fidelity_mismatch is not None:
                    attributes[semconv.LLM_FIDELITY_MISMATCH] = call.fidelity_mismatch
                if fixed:
                    attributes[semconv.LLM_FIXED] = True
                spans.append(
                    SpanIn.model_construct(
                        rollout_id=context.rollout_id,
                        attempt_id=context.attempt_id,
                        trace_id=context.trace_id,
                        span_id=os.urandom(8).hex(),
                        parent_id=context.parent_id,
                        name=f"{call.operation} {model_name}",
                        kind="CLIENT",
                        start_time_ns=context.received_ns,
                        end_time_ns=ended_ns,
                        attributes=attributes,
                        events=[],
                        links=[],
                        status=SpanStatus(code=SpanStatusCode.OK),
                        resource={"service.name": "agentbolt-gateway"},
                        scope="agentbolt.gateway",
                    )
                )
            return spans

        self.recorder.add(context.attempt_id, build)

    # --- raw replies, for rendering assistant tool-call turns as the model wrote them -------------------

    def _remember_raw(self, choice: Choice) -> None:
        key = message_key(choice.message())
        for call in choice.tool_calls:
            self._raw_replies[call["id"]] = (choice.response.text, key)
        while len(self._raw_replies) > 100_000:
            self._raw_replies.popitem(last=False)

    def _recall(self, message: Mapping[str, Any]) -> str | None:
        calls = message.get("tool_calls") or []
        if not calls:
            return None
        remembered = self._raw_replies.get(calls[0].get("id", ""))
        if remembered is None or remembered[1] != message_key(message):
            return None  # not ours, or edited since: render it from its fields
        return remembered[0]


def _message_dict(message: ChatMessage) -> dict[str, Any]:
    """A request message as a plain dict: content as one string, only the fields that matter."""
    out: dict[str, Any] = {"role": message.role, "content": None if message.content is None else message.text()}
    if message.name is not None:
        out["name"] = message.name
    if message.tool_calls:
        out["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.function.name, "arguments": c.function.arguments}}
            for c in message.tool_calls
        ]
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    return out


def _span_params(req: ChatCompletionRequest | CompletionRequest, max_new: int) -> dict[str, Any]:
    params: dict[str, Any] = {semconv.GEN_AI_REQUEST_MAX_TOKENS: max_new}
    if req.temperature is not None:
        params[semconv.GEN_AI_REQUEST_TEMPERATURE] = req.temperature
    if req.top_p is not None:
        params[semconv.GEN_AI_REQUEST_TOP_P] = req.top_p
    if req.seed is not None:
        params[semconv.GEN_AI_REQUEST_SEED] = req.seed
    return params
