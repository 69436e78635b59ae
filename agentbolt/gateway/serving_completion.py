"""``/v1/completions``: a text-completion request (one prompt: text or token ids) validated, and its response.

:func:`prepare_completion` refuses a call before anything is generated (nothing is stored for a refused
call). A stream sends, per choice, one chunk with its text and one with its finish reason; then, with
``stream_options.include_usage``, the usage; then ``data: [DONE]``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from agentbolt.gateway.attribution import CallContext
from agentbolt.gateway.call import Choice, Prepared
from agentbolt.gateway.errors import GatewayError
from agentbolt.gateway.gateway import Gateway
from agentbolt.gateway.llm_spans import request_attributes
from agentbolt.gateway.responses import DONE, dumps, fingerprint, logprob_tokens, sse, usage
from agentbolt.gateway.text import TokenText
from agentbolt.gateway.validation import validate_body
from agentbolt.types import CompletionRequest

DEFAULT_MAX_TOKENS = 16  # OpenAI's (and vLLM's) default for the legacy completions API


async def prepare_completion(gateway: Gateway, body: Any, context: CallContext) -> Prepared:
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
    req = validate_body(CompletionRequest, body)
    served = await gateway.admit(context, req.model)
    for name, ok in (
        ("echo", not req.echo),
        ("suffix", req.suffix is None),
        ("best_of", req.best_of in (None, req.n)),
    ):
        if not ok:
            raise GatewayError(f"{name} is not supported", param=name, code="unsupported_parameter")
    gateway.check_n(req.n)
    prompt = req.prompt
    if isinstance(prompt, str):
        gateway.check_prompt_chars(served, len(prompt), "prompt")
        prompt_ids = await gateway.tokenize(len(prompt), served.text.encode, prompt, special_tokens=True)
    else:
        prompt_ids = list(prompt)
    if not prompt_ids:
        raise GatewayError("the prompt is empty", param="prompt")
    max_new = gateway.max_new_tokens(served, prompt_ids, req.max_tokens, DEFAULT_MAX_TOKENS)
    stops = req.stop_strings()
    requests = gateway.generation_requests(served, req, prompt_ids, max_new, req.logprobs or 0, stops)
    return Prepared(
        operation="text_completion",
        served=served,
        context=context,
        request_model=req.model,
        input_messages=req.prompt,
        message_keys=None,
        prompt_ids=prompt_ids,
        requests=requests,
        stops=stops,
        tools=None,
        logprobs=req.logprobs is not None,
        stream=req.stream,
        include_usage=bool(req.stream_options and req.stream_options.include_usage),
        fidelity_mismatch=None,
        span_params=request_attributes(req, max_new),
    )


def _completion_logprobs(text: TokenText, c: Choice, k: int) -> dict[str, Any]:
    n = logprob_tokens(c)
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
    return dumps(
        {
            "id": f"cmpl-{call.response_id}",
            "object": "text_completion",
            "created": call.created,
            "model": model,
            "system_fingerprint": fingerprint(choices),
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
