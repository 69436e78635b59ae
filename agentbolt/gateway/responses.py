"""OpenAI response bodies and server-sent-event streams, built as plain dicts and bytes.

The shapes are documented by the models of the Gateway section of :mod:`agentbolt.types`; building
dicts directly keeps pydantic off the hot path.

A stream carries exactly the content of the non-streamed response: the engine returns whole choices,
so the chunks follow once generation is done (the first chunk, with the role, goes out at once).
Per choice: the role chunk, content deltas (one per token, each with that token's logprobs when asked;
tokens that end inside a UTF-8 character are merged into the next), a tool-call delta when the reply
called tools, the finish-reason chunk; then, with ``stream_options.include_usage``, a chunk with no
choices and the usage; then ``data: [DONE]``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from agentbolt.gateway.calls import Choice, Prepared
from agentbolt.gateway.text import TokenText

DONE = b"data: [DONE]\n\n"


def _dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def sse(value: Any) -> bytes:
    """One server-sent event carrying ``value`` as JSON."""
    return b"data: " + _dumps(value) + b"\n\n"


def usage(call: Prepared, choices: list[Choice]) -> dict[str, int]:
    prompt = len(call.prompt_ids)
    completion = sum(len(c.token_ids) for c in choices)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _logprob_tokens(choice: Choice) -> int:
    """Tokens covered by logprobs: the response without a trailing end-of-turn token."""
    return len(choice.token_ids) - choice.response.end_of_turn


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


def _fingerprint(choices: list[Choice]) -> str:
    return f"agentbolt-v{choices[0].result.model_version}" if choices else "agentbolt"


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
                "content": [_chat_logprob(text, c, i) for i in range(_logprob_tokens(c))],
                "refusal": None,
            }
        out_choices.append(
            {"index": c.index, "message": message, "logprobs": logprobs, "finish_reason": c.finish_reason}
        )
    return _dumps(
        {
            "id": f"chatcmpl-{call.response_id}",
            "object": "chat.completion",
            "created": call.created,
            "model": model,
            "system_fingerprint": _fingerprint(choices),
            "choices": out_choices,
            "usage": usage(call, choices),
        }
    )


def chat_chunk(call: Prepared, model: str, choices: list[dict[str, Any]], fingerprint: str | None) -> bytes:
    chunk: dict[str, Any] = {
        "id": f"chatcmpl-{call.response_id}",
        "object": "chat.completion.chunk",
        "created": call.created,
        "model": model,
        "system_fingerprint": fingerprint,
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
    fingerprint = _fingerprint(choices)

    def one(index: int, delta: dict[str, Any], logprobs: Any = None, finish: str | None = None) -> bytes:
        entry = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        return chat_chunk(call, model, [entry], fingerprint)

    for c in choices:
        n_lp = _logprob_tokens(c)
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
                "system_fingerprint": fingerprint,
                "choices": [],
                "usage": usage(call, choices),
            }
        )
    yield DONE


def _completion_logprobs(text: TokenText, c: Choice, k: int) -> dict[str, Any]:
    n = _logprob_tokens(c)
    ids = c.token_ids[:n]
    tokens = [text.token_str(t) for t in ids]
    offsets, at = [], 0
    for token in tokens:
        offsets.append(at)
        at += len(token)
    top = None
    if k and c.result.top_logprobs:
        top = [{text.token_str(t.token_id): t.logprob for t in c.result.top_logprobs[i]} for i in range(n)]
    return {"tokens": tokens, "token_logprobs": c.result.logprobs[:n], "top_logprobs": top, "text_offset": offsets}


def completion(call: Prepared, choices: list[Choice], model: str, text: TokenText) -> bytes:
    """The ``text_completion`` body."""
    k = call.requests[0].top_logprobs
    return _dumps(
        {
            "id": f"cmpl-{call.response_id}",
            "object": "text_completion",
            "created": call.created,
            "model": model,
            "system_fingerprint": _fingerprint(choices),
            "choices": [
                {
                    "index": c.index,
                    "text": c.content or "",
                    "logprobs": _completion_logprobs(text, c, k) if call.logprobs else None,
                    "finish_reason": c.finish_reason,
                }
                for c in choices
            ],
            "usage": usage(call, choices),
        }
    )


def completion_stream_body(call: Prepared, choices: list[Choice], model: str, text: TokenText) -> Iterator[bytes]:
    """A text-completion stream: one chunk per choice with its text, one with its finish reason, usage, DONE."""
    k = call.requests[0].top_logprobs
    base = {"id": f"cmpl-{call.response_id}", "object": "text_completion", "created": call.created, "model": model}
    for c in choices:
        logprobs = _completion_logprobs(text, c, k) if call.logprobs else None
        yield sse(
            {
                **base,
                "choices": [{"index": c.index, "text": c.content or "", "logprobs": logprobs, "finish_reason": None}],
            }
        )
        yield sse(
            {**base, "choices": [{"index": c.index, "text": "", "logprobs": None, "finish_reason": c.finish_reason}]}
        )
    if call.include_usage:
        yield sse({**base, "choices": [], "usage": usage(call, choices)})
    yield DONE
