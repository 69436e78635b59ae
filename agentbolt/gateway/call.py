"""One gateway call as it moves through the stages: the model serving it, the call prepared, its choices.

:class:`Prepared` is what ``serving_chat`` / ``serving_completion`` make of a request once every check
passed; :class:`Choice` is one generated choice, as the response builders return it and
``llm_spans`` records it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from agentbolt.gateway.attribution import CallContext
from agentbolt.gateway.backend import Backend
from agentbolt.gateway.fidelity import MessageKey
from agentbolt.gateway.text import ResponseText, TokenText
from agentbolt.gateway.tools import ToolFormat
from agentbolt.types import GenerationRequest, GenerationResult

Operation = Literal["chat", "text_completion"]


@dataclass
class Served:
    """One model the gateway serves: its backend, its tokenizer's text helper and its tool format."""

    backend: Backend
    text: TokenText
    fixed: bool  # a fixed model: traced, never trained (the policy is the one model that is not fixed)
    tool_format: ToolFormat  # how tools are written into its prompts and read back from its replies

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
    span_params: dict[str, Any]  # the request's sampling parameters, as span attributes
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
