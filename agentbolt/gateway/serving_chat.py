"""``/v1/chat/completions``: a chat request validated and rendered to prompt ids, and its response built.

:func:`prepare_chat` refuses a call before anything is generated (nothing is stored for a refused call):
the body is validated, messages with tools are rendered by ``tools.py`` for templates without tool
support (in the served model's tool format, ``Gateway.tool_format``), the tokenizer's chat template renders
the prompt ids, and the call is checked against the model's context and the attempt's token fidelity.

A stream carries exactly the content of the non-streamed response: the engine returns whole choices,
so the chunks follow once generation is done and, with ``answer`` span durability, once the call's spans
are stored (``Gateway.generate``); the first chunk, with the role, goes out at once.
Per choice: the role chunk, content deltas (one per token, each with that token's logprobs when asked;
tokens that end inside a UTF-8 character are merged into the next), a tool-call delta when the reply
called tools, the finish-reason chunk; then, with ``stream_options.include_usage``, a chunk with no
choices and the usage; then ``data: [DONE]``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from agentbolt.errors import BadInput
from agentbolt.gateway.attribution import CallContext
from agentbolt.gateway.call import Choice, Prepared
from agentbolt.gateway.errors import GatewayError
from agentbolt.gateway.gateway import Gateway
from agentbolt.gateway.llm_spans import request_attributes
from agentbolt.gateway.responses import DONE, dumps, fingerprint, logprob_tokens, sse, usage
from agentbolt.gateway.text import TokenText
from agentbolt.gateway.tools import active_tools, render_tool_messages
from agentbolt.gateway.validation import validate_body
from agentbolt.types import ChatCompletionRequest, ChatMessage

# --- the request ------------------------------------------------------------------------------------


async def prepare_chat(gateway: Gateway, body: Any, context: CallContext) -> Prepared:
    """Validate a chat request and turn it into generation requests.

    Raises:
        GatewayError, NotFound: the call is refused (4xx); nothing is generated or stored.
    """
    req = validate_body(ChatCompletionRequest, body)
    served = await gateway.admit(context, req.model)
    if req.response_format is not None and req.response_format.type != "text":
        raise GatewayError(
            f"response_format {req.response_format.type!r} needs constrained decoding, which this engine does not "
            "do: ask for JSON in the prompt and parse the reply, or use tools",
            param="response_format",
            code="unsupported_parameter",
        )
    if req.top_logprobs and not req.logprobs:
        raise GatewayError("top_logprobs needs logprobs set to true", param="top_logprobs")
    gateway.check_n(req.n)
    messages = [_message_dict(m) for m in req.messages]
    chars = sum(_message_chars(m) for m in messages)
    gateway.check_prompt_chars(served, chars, "messages")
    tools = [t.model_dump(exclude_none=True) for t in req.tools] if req.tools else None
    tool_choice = (
        req.tool_choice.model_dump()
        if req.tool_choice is not None and not isinstance(req.tool_choice, str)
        else req.tool_choice
    )
    try:
        parse_for = active_tools(tools, tool_choice)
        if tools or any(m["role"] == "tool" or "tool_calls" in m for m in messages):
            rendered = render_tool_messages(
                messages, tools, tool_choice, recall=gateway.recall, tool_format=served.tool_format
            )
        else:
            rendered = [
                {"role": "system" if m["role"] == "developer" else m["role"], "content": m["content"]} for m in messages
            ]
    except BadInput as exc:
        raise GatewayError(str(exc), param="messages") from None
    try:
        prompt_ids = await gateway.tokenize(chars, served.text.chat_prompt, rendered)
    except Exception as exc:  # the model's own Jinja template refused (e.g. roles must alternate)
        raise GatewayError(f"the model's chat template cannot render these messages: {exc}", param="messages") from None
    max_new = gateway.max_new_tokens(
        served, prompt_ids, req.max_completion_tokens or req.max_tokens, gateway.config.default_max_tokens
    )
    stops = req.stop_strings()
    requests = gateway.generation_requests(served, req, prompt_ids, max_new, req.top_logprobs or 0, stops)
    keys, mismatch = gateway.check_fidelity(context, messages, prompt_ids)
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
        span_params=request_attributes(req, max_new),
    )


def _message_chars(message: dict[str, Any]) -> int:
    """Characters of a message that go into the prompt: its content and its tool calls."""
    calls = message.get("tool_calls") or ()
    return len(message["content"] or "") + sum(
        len(c["function"]["arguments"]) + len(c["function"]["name"]) for c in calls
    )


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


# --- the response -----------------------------------------------------------------------------------


def _chat_logprob(text: TokenText, choice: Choice, i: int) -> dict[str, Any]:
    token_id = choice.token_ids[i]
    raw = text.token_bytes(token_id)
    top = choice.result.top_logprobs[i] if choice.result.top_logprobs else []
    return {
        "token": raw.decode("utf-8", errors="replace"),
        "logprob": choice.result.logprobs[i],
        "bytes": list(raw),
        "top_logprobs": [
            {"token": text.token_str(t.token_id), "logprob": t.logprob, "bytes": list(text.token_bytes(t.token_id))}
            for t in top
        ],
    }


def chat_completion(call: Prepared, choices: list[Choice], model: str, text: TokenText) -> bytes:
    """The ``chat.completion`` body."""
    out_choices = []
    for c in choices:
        message: dict[str, Any] = {"role": "assistant", "content": c.content, "refusal": None}
        if c.tool_calls:
            message["tool_calls"] = c.tool_calls
        logprobs = None
        if call.logprobs:
            logprobs = {
                "content": [_chat_logprob(text, c, i) for i in range(logprob_tokens(c))],
                "refusal": None,
            }
        out_choices.append(
            {"index": c.index, "message": message, "logprobs": logprobs, "finish_reason": c.finish_reason}
        )
    return dumps(
        {
            "id": f"chatcmpl-{call.response_id}",
            "object": "chat.completion",
            "created": call.created,
            "model": model,
            "system_fingerprint": fingerprint(choices),
            "choices": out_choices,
            "usage": usage(call, choices),
        }
    )


def chat_chunk(call: Prepared, model: str, choices: list[dict[str, Any]], system_fingerprint: str | None) -> bytes:
    """One ``chat.completion.chunk`` event."""
    chunk: dict[str, Any] = {
        "id": f"chatcmpl-{call.response_id}",
        "object": "chat.completion.chunk",
        "created": call.created,
        "model": model,
        "system_fingerprint": system_fingerprint,
        "choices": choices,
    }
    if call.include_usage:
        chunk["usage"] = None
    return sse(chunk)


def chat_role_chunks(call: Prepared, model: str) -> bytes:
    """The first event of a stream: every choice's role, sent before generation ends."""
    choices = [
        {"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
        for i in range(len(call.requests))
    ]
    return chat_chunk(call, model, choices, None)


def chat_stream_body(call: Prepared, choices: list[Choice], model: str, text: TokenText) -> Iterator[bytes]:
    """The events after the role chunk, through ``[DONE]``."""
    system_fingerprint = fingerprint(choices)

    def one(index: int, delta: dict[str, Any], logprobs: Any = None, finish: str | None = None) -> bytes:
        entry = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        return chat_chunk(call, model, [entry], system_fingerprint)

    for c in choices:
        n_lp = logprob_tokens(c)
        if c.tool_calls or c.malformed is not None or call.tools:
            # Content was cut out of the raw text by the tool-call parser: it goes as one delta.
            lp = (
                {"content": [_chat_logprob(text, c, i) for i in range(n_lp)], "refusal": None}
                if call.logprobs
                else None
            )
            if c.content:
                yield one(c.index, {"content": c.content}, lp)
            elif lp is not None:
                yield one(c.index, {}, lp)
            if c.tool_calls:
                deltas = [{"index": k, **tc} for k, tc in enumerate(c.tool_calls)]
                yield one(c.index, {"tool_calls": deltas})
        else:
            content = c.content or ""
            pieces = text.pieces(c.token_ids[: c.response.text_tokens])
            sent, pending = 0, []
            for i, piece in enumerate(pieces):
                pending.append(i)
                if not piece:
                    continue
                lp = None
                if call.logprobs:
                    lp = {"content": [_chat_logprob(text, c, j) for j in pending if j < n_lp], "refusal": None}
                yield one(c.index, {"content": piece}, lp)
                sent += len(piece)
                pending = []
            rest = content[sent:]
            # Tokens not yet sent: a trailing partial character, the end-of-turn token, a stop string's tokens.
            tail = [*pending, *range(len(pieces), n_lp)] if call.logprobs else []
            if rest or tail:
                lp = {"content": [_chat_logprob(text, c, j) for j in tail], "refusal": None} if tail else None
                yield one(c.index, {"content": rest} if rest else {}, lp)
        yield one(c.index, {}, None, c.finish_reason)
    if call.include_usage:
        yield sse(
            {
                "id": f"chatcmpl-{call.response_id}",
                "object": "chat.completion.chunk",
                "created": call.created,
                "model": model,
                "system_fingerprint": system_fingerprint,
                "choices": [],
                "usage": usage(call, choices),
            }
        )
    yield DONE
