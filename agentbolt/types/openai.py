"""The OpenAI protocol as the gateway speaks it, its error shape (every route's), and the gateway's reports."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from agentbolt.types.base import JSONValue, SpanDurability, _Model

# Gateway (agentbolt/gateway): the OpenAI-compatible request bodies it validates, and the response
# shapes it sends (built as plain dicts on the hot path; these models document them in /docs).


class _OpenAIModel(BaseModel):
    """OpenAI wire objects: unknown fields are refused (the gateway names them in a 400)."""

    model_config = ConfigDict(extra="forbid")


class ChatContentPart(_OpenAIModel):
    """One part of a message's content; only text parts are supported."""

    model_config = ConfigDict(extra="allow")  # image_url etc. get a clear error from the validator below
    type: str
    text: str | None = None

    @model_validator(mode="after")
    def _text_only(self) -> ChatContentPart:
        if self.type not in ("text", "refusal"):
            raise ValueError(f"content parts of type {self.type!r} are not supported: this gateway serves text only")
        if self.type == "text" and self.text is None:
            raise ValueError("a text content part needs 'text'")
        return self


class ToolCallFunction(_OpenAIModel):
    name: str = Field(min_length=1)
    arguments: str = Field(description="JSON object, as a string.")


class ToolCall(_OpenAIModel):
    id: str = Field(min_length=1)
    type: Literal["function"] = "function"
    function: ToolCallFunction


class ChatMessage(_OpenAIModel):
    """One message of a chat request. ``developer`` is treated as ``system``."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ChatContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None  # a tool result without one is rendered without an id
    # Echoed back by clients that append a returned message as is; only empty values are accepted.
    refusal: str | None = None
    annotations: list[JSONValue] | None = None
    audio: None = Field(default=None, description="Not supported; must be absent or null.")
    function_call: None = Field(default=None, description="Not supported (use tool_calls); absent or null.")

    @model_validator(mode="after")
    def _role_rules(self) -> ChatMessage:
        if self.role != "assistant" and self.tool_calls:
            raise ValueError(f"only assistant messages carry tool_calls (this one has role {self.role!r})")
        if self.role == "assistant":
            if self.content is None and not self.tool_calls:
                raise ValueError("an assistant message needs 'content' or 'tool_calls'")
        elif self.content is None:
            raise ValueError(f"a message with role {self.role!r} needs 'content'")
        return self

    def text(self) -> str:
        """The content as one string (text parts joined)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text or "" for p in self.content if p.type == "text")


class FunctionDefinition(_OpenAIModel):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    description: str | None = None
    parameters: dict[str, JSONValue] | None = Field(default=None, description="JSON Schema of the arguments.")
    strict: bool | None = None


class ToolDefinition(_OpenAIModel):
    type: Literal["function"]
    function: FunctionDefinition


class ToolChoiceFunction(_OpenAIModel):
    name: str


class ToolChoiceNamed(_OpenAIModel):
    type: Literal["function"]
    function: ToolChoiceFunction


class StreamOptions(_OpenAIModel):
    include_usage: bool = False
    include_obfuscation: bool | None = None  # accepted and ignored: the gateway pads nothing


class ResponseFormat(_OpenAIModel):
    """Only ``{"type": "text"}`` is served: JSON modes need constrained decoding, which the engine lacks."""

    model_config = ConfigDict(extra="allow")
    type: Literal["text", "json_object", "json_schema"]


class _SamplingFields(_OpenAIModel):
    model: str = Field(min_length=1)
    n: int = Field(default=1, ge=1, description="Choices to generate; each is one span.")
    temperature: float | None = Field(default=None, ge=0, le=2, description="0 is greedy; default 1.")
    top_p: float | None = Field(default=None, gt=0, le=1)
    seed: int | None = Field(default=None, description="Choice i samples with seed + i.")
    stop: str | list[str] | None = Field(default=None, description="Up to 16 stop strings.")
    max_tokens: int | None = Field(default=None, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    frequency_penalty: float | None = Field(default=None, description="Only 0 is supported.")
    presence_penalty: float | None = Field(default=None, description="Only 0 is supported.")
    logit_bias: dict[str, float] | None = Field(default=None, description="Only an empty map is supported.")
    user: str | None = None  # accepted, ignored
    metadata: dict[str, JSONValue] | None = None  # accepted, ignored
    store: bool | None = None  # accepted, ignored (every call is recorded as a span anyway)
    service_tier: str | None = None  # accepted, ignored

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: str | list[str] | None) -> str | list[str] | None:
        stops = [v] if isinstance(v, str) else (v or [])
        if len(stops) > 16:
            raise ValueError("stop must be at most 16 strings")
        return v

    def stop_strings(self) -> list[str]:
        """The stop strings, without empty ones (an empty string stops nothing)."""
        return [s for s in ([self.stop] if isinstance(self.stop, str) else (self.stop or [])) if s]


class ChatCompletionRequest(_SamplingFields):
    """``POST /v1/chat/completions``: OpenAI's chat request, minus what a local text model cannot honour."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1, description="Preferred over max_tokens.")
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    tools: list[ToolDefinition] | None = None
    tool_choice: Literal["none", "auto", "required"] | ToolChoiceNamed | None = None
    parallel_tool_calls: bool | None = None  # accepted; several calls in one reply are always parsed
    response_format: ResponseFormat | None = None
    prompt_cache_key: str | None = None  # accepted, ignored
    safety_identifier: str | None = None  # accepted, ignored


class CompletionRequest(_SamplingFields):
    """``POST /v1/completions``: one prompt, as a string or a list of token ids."""

    prompt: str | list[int] = Field(description="Text (tokenized with the tokenizer's special tokens) or token ids.")
    logprobs: int | None = Field(default=None, ge=0, le=20, description="Alternatives per position (legacy).")
    echo: bool = Field(default=False, description="Only false is supported.")
    best_of: int | None = Field(default=None, ge=1, description="Only equal to n (or absent) is supported.")
    suffix: str | None = Field(default=None, description="Not supported.")


class Usage(_OpenAIModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class TopLogprob(_OpenAIModel):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprobOut(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(_OpenAIModel):
    content: list[TokenLogprobOut] | None
    refusal: None = None


class AssistantMessage(_OpenAIModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ToolCall] | None = None
    refusal: None = None


class ChatChoice(_OpenAIModel):
    index: int
    message: AssistantMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: Literal["stop", "length", "tool_calls"]


class ChatCompletion(_OpenAIModel):
    """The non-streaming chat response; a stream sends ``chat.completion.chunk`` objects of the same content."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str | None = Field(default=None, description="agentbolt-v{model version}.")


class CompletionLogprobs(_OpenAIModel):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]] | None
    text_offset: list[int]


class CompletionChoice(_OpenAIModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: Literal["stop", "length"]


class Completion(_OpenAIModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage
    system_fingerprint: str | None = None


class ModelCard(_OpenAIModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "agentbolt"
    max_model_len: int | None = Field(default=None, description="Context length (prompt + response tokens).")


class ModelList(_OpenAIModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorObject(_OpenAIModel):
    """What went wrong (see :func:`agentbolt.errors.error_body`)."""

    message: str = Field(description="What is wrong and what to do about it.")
    type: str = Field(description="The category: invalid_request_error (the request is at fault) or server_error.")
    param: str | None = Field(description="The request field at fault (dotted path), if one is.")
    code: str | None = Field(description="The specific reason: model_not_found, attempt_finished, not_found...")


class ErrorResponse(_OpenAIModel):
    """The body of every agentbolt error response (the gateway's and the /api server's): OpenAI's shape."""

    error: ErrorObject


class FidelityReport(_Model):
    """Token-fidelity checks of one rollout's LLM calls, counted from its stored spans."""

    rollout_id: str
    checked: int = Field(description="Calls that extended their attempt's previous conversation.")
    mismatches: int = Field(description="Of those, calls whose prompt ids did not extend the previous ids.")
    refused: int = Field(default=0, description="Mismatched calls refused in strict mode (no span; this process).")
    mismatched_span_ids: list[str] = Field(default_factory=list)


class GatewayStats(_Model):
    """Counters of this server process's gateway since it started."""

    model: str
    model_version: int
    calls: int = Field(description="Calls answered (each may have several choices).")
    refused: int = Field(description="Calls answered with a 4xx.")
    spans_recorded: int
    spans_pending: int = Field(description="Calls whose spans wait for their batched write.")
    spans_dropped: int = Field(description="Spans the store refused or could not take after retries (logged).")
    span_durability: SpanDurability = Field(
        description="answer: a call is answered once its spans are stored; finish: at once, its spans stored "
        "within the flush interval or when its attempt finishes on this process."
    )
    fidelity_checked: int
    fidelity_mismatches: int
