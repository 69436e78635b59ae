"""What chat and text-completion responses share: JSON bytes, server-sent events, usage, fingerprint.

Response bodies are built as plain dicts and bytes, which keeps pydantic off the hot path; their shapes
are documented by the models of :mod:`agentbolt.types.openai`. ``serving_chat`` and
``serving_completion`` build the bodies of their endpoints from these pieces.
"""

from __future__ import annotations

import json
from typing import Any

from agentbolt.gateway.call import Choice, Prepared

DONE = b"data: [DONE]\n\n"


def dumps(value: Any) -> bytes:
    """``value`` as compact UTF-8 JSON."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def sse(value: Any) -> bytes:
    """One server-sent event carrying ``value`` as JSON."""
    return b"data: " + dumps(value) + b"\n\n"


def usage(call: Prepared, choices: list[Choice]) -> dict[str, int]:
    """OpenAI's ``usage`` of a call: the prompt once, the completion tokens of every choice."""
    prompt = len(call.prompt_ids)
    completion = sum(len(c.token_ids) for c in choices)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def logprob_tokens(choice: Choice) -> int:
    """Tokens covered by logprobs: the response without a trailing end-of-turn token."""
    return len(choice.token_ids) - choice.response.end_of_turn


def fingerprint(choices: list[Choice]) -> str:
    """``system_fingerprint``: the model version the choices were generated with."""
    return f"agentbolt-v{choices[0].result.model_version}" if choices else "agentbolt"
