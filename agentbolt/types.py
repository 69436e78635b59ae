"""Every type that crosses a process boundary or lands on disk, in one place.

The words follow DESIGN.md: a *task* is one dataset input; a *rollout* is one execution of the
agent on a task (rollouts of the same task share a ``group_id``); an *attempt* is one try of a
rollout; a *span* is one OpenTelemetry span stored with its rollout id, attempt id and a
per-attempt sequence number.

Timestamps are seconds since the epoch (float) for queue records and nanoseconds since the
epoch (int) for spans, as OpenTelemetry has them.
"""

from __future__ import annotations

from enum import Enum
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

JSONValue = Any
"""Any JSON-serialisable value (a task's input, an attribute value)."""

RolloutMode = Literal["train", "val", "test"]


class RolloutStatus(str, Enum):
    """Where a rollout is in its life. Legal moves are in :mod:`agentbolt.lifecycle`."""

    QUEUING = "queuing"  # waiting for a worker (new, or requeued for another attempt)
    RUNNING = "running"  # an attempt holds it
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # the last allowed attempt failed
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (RolloutStatus.SUCCEEDED, RolloutStatus.FAILED, RolloutStatus.CANCELLED)


class AttemptStatus(str, Enum):
    """Where an attempt is in its life. Legal moves are in :mod:`agentbolt.lifecycle`."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # the agent raised, or the worker reported failure
    TIMEOUT = "timeout"  # ran longer than the rollout's ``timeout_s``
    UNRESPONSIVE = "unresponsive"  # no heartbeat within ``heartbeat_timeout_s`` (worker died)
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self is not AttemptStatus.RUNNING


RetryableStatus = Literal["failed", "timeout", "unresponsive"]
_DEFAULT_RETRY_ON: tuple[RetryableStatus, ...] = ("timeout", "unresponsive")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RolloutConfig(_Model):
    """How a rollout's attempts are run and retried."""

    timeout_s: float | None = Field(
        default=None, gt=0, description="Wall-clock limit of one attempt; None means no limit."
    )
    heartbeat_timeout_s: float | None = Field(
        default=60.0,
        gt=0,
        description="An attempt with no heartbeat for this long is marked unresponsive; None disables.",
    )
    max_attempts: int = Field(default=1, ge=1, le=100, description="Attempts allowed before the rollout fails.")
    retry_on: list[RetryableStatus] = Field(
        default_factory=lambda: list(_DEFAULT_RETRY_ON),
        description="Attempt outcomes that requeue the rollout while attempts remain.",
    )


class RolloutCreate(_Model):
    """A request to enqueue one rollout of a task."""

    input: JSONValue = Field(description="The task: any JSON value handed to the agent function.")
    mode: RolloutMode = "train"
    group_id: str | None = Field(
        default=None, max_length=200, description="Shared by rollouts of the same task (a GRPO group)."
    )
    model_version: int | None = Field(
        default=None, ge=0, description="Model version the rollout should run on; None means latest."
    )
    config: RolloutConfig = Field(default_factory=RolloutConfig)
    metadata: dict[str, JSONValue] = Field(default_factory=dict)
    rollout_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        pattern=r"^[A-Za-z0-9._:-]+$",
        description="Optional caller-chosen id; generated when absent.",
    )


class ErrorInfo(_Model):
    """What went wrong in an attempt, as the worker saw it."""

    type: str = Field(max_length=500)
    message: str = Field(default="", max_length=20_000)
    traceback: str | None = Field(default=None, max_length=200_000)


class Attempt(_Model):
    attempt_id: str
    rollout_id: str
    number: int = Field(description="1 for the first try, 2 for the first retry, ...")
    worker_id: str | None = None
    status: AttemptStatus = AttemptStatus.RUNNING
    started_at: float
    ended_at: float | None = None
    last_heartbeat_at: float
    error: ErrorInfo | None = None


class Rollout(_Model):
    rollout_id: str
    input: JSONValue
    mode: RolloutMode
    group_id: str | None = None
    model_version: int | None = None
    config: RolloutConfig
    metadata: dict[str, JSONValue] = Field(default_factory=dict)
    status: RolloutStatus
    created_at: float
    finished_at: float | None = None
    num_attempts: int = 0
    reward: float | None = Field(default=None, description="Final (primary) reward, when one was reported.")
    attempts: list[Attempt] | None = Field(
        default=None, description="Filled by queries that ask for attempts; None otherwise."
    )


class Claim(_Model):
    """What a worker receives from a dequeue: the rollout and the attempt it now owns."""

    rollout: Rollout
    attempt: Attempt


class DequeueRequest(_Model):
    worker_id: str = Field(min_length=1, max_length=200)
    modes: list[RolloutMode] | None = Field(default=None, description="Only these modes; None means any.")
    wait_s: float = Field(default=0.0, ge=0, le=60, description="Long-poll: wait this long for a rollout.")


class HeartbeatRequest(_Model):
    worker_id: str | None = Field(default=None, max_length=200)


class AttemptFinish(_Model):
    """A worker's report that its attempt ended."""

    status: Literal["succeeded", "failed"]
    error: ErrorInfo | None = None
    reward: float | None = Field(default=None, description="Final reward, if the agent returned one.")

    @field_validator("reward")
    @classmethod
    def _finite(cls, v: float | None) -> float | None:
        if v is not None and v != v:  # NaN
            raise ValueError("reward must be a finite number")
        return v


# ---------------------------------------------------------------------------------------------
# Spans


class SpanStatusCode(str, Enum):
    UNSET = "UNSET"
    OK = "OK"
    ERROR = "ERROR"


class SpanStatus(_Model):
    code: SpanStatusCode = SpanStatusCode.UNSET
    message: str = ""


class SpanEvent(_Model):
    name: str
    time_ns: int = Field(ge=0)
    attributes: dict[str, JSONValue] = Field(default_factory=dict)


class SpanLink(_Model):
    trace_id: str
    span_id: str
    attributes: dict[str, JSONValue] = Field(default_factory=dict)


SpanKind = Literal["INTERNAL", "SERVER", "CLIENT", "PRODUCER", "CONSUMER", "UNSPECIFIED"]

_HEX32 = r"^[0-9a-f]{32}$"
_HEX16 = r"^[0-9a-f]{16}$"


class SpanIn(_Model):
    """A span as received (OTLP, gateway, reward API), before the store numbers it."""

    rollout_id: str | None = Field(default=None, description="None only for unattributed gateway calls.")
    attempt_id: str | None = None
    trace_id: str = Field(pattern=_HEX32, description="32 lowercase hex characters.")
    span_id: str = Field(pattern=_HEX16, description="16 lowercase hex characters.")
    parent_id: str | None = Field(default=None, pattern=_HEX16)
    name: str = Field(max_length=1000)
    kind: SpanKind = "INTERNAL"
    start_time_ns: int = Field(ge=0)
    end_time_ns: int = Field(ge=0)
    attributes: dict[str, JSONValue] = Field(default_factory=dict)
    events: list[SpanEvent] = Field(default_factory=list)
    links: list[SpanLink] = Field(default_factory=list)
    status: SpanStatus = Field(default_factory=SpanStatus)
    resource: dict[str, JSONValue] = Field(default_factory=dict)
    scope: str | None = Field(default=None, description="Instrumentation scope name.")

    @model_validator(mode="after")
    def _attempt_needs_rollout(self) -> SpanIn:
        if self.attempt_id is not None and self.rollout_id is None:
            raise ValueError("a span with an attempt_id must also carry a rollout_id")
        return self


class Span(SpanIn):
    """A stored span. ``sequence_id`` orders the spans of one attempt by arrival at the store."""

    sequence_id: int


class AddSpansResult(_Model):
    inserted: int
    duplicates: int = Field(description="Spans already stored (same trace id and span id); kept once.")


# ---------------------------------------------------------------------------------------------
# Rewards, workers, model versions


class RewardCreate(_Model):
    """A reward reported outside the agent's own tracing (e.g. by a judge after the rollout)."""

    attempt_id: str | None = Field(default=None, description="Defaults to the rollout's latest attempt.")
    value: float | None = Field(default=None, description="Scalar reward; or give ``dimensions``.")
    dimensions: dict[str, float] = Field(default_factory=dict, description="Named reward dimensions.")
    primary: str | None = Field(default=None, description="Which dimension is the primary reward.")
    final: bool = Field(default=True, description="Whether this is the episode's final reward.")

    @model_validator(mode="after")
    def _one_value(self) -> RewardCreate:
        if self.value is None and not self.dimensions:
            raise ValueError("give a value or at least one dimension")
        if self.primary is not None and self.primary not in self.dimensions:
            raise ValueError(f"primary {self.primary!r} is not one of the dimensions")
        if self.value is None and self.primary is None and len(self.dimensions) > 1:
            raise ValueError("several dimensions need a primary (or a value)")
        return self

    def primary_value(self) -> float:
        """The scalar that stands for this reward: ``value``, else the primary (or only) dimension."""
        if self.value is not None:
            return self.value
        name = self.primary or next(iter(self.dimensions))
        return self.dimensions[name]


class Worker(_Model):
    worker_id: str
    first_seen_at: float
    last_seen_at: float
    current_attempt_id: str | None = None
    attempts_done: int = 0


class ModelVersionCreate(_Model):
    """A record that the engine serves new weights (written by the trainer after each update)."""

    version: int = Field(ge=0)
    model: str = Field(min_length=1, max_length=500, description="Model name the gateway serves it as.")
    checkpoint: str | None = Field(default=None, description="Where the weights are (path or URI).")
    metadata: dict[str, JSONValue] = Field(default_factory=dict)


class ModelVersion(ModelVersionCreate):
    created_at: float


# ---------------------------------------------------------------------------------------------
# Queries

T = TypeVar("T")


class Page(_Model, Generic[T]):
    items: list[T]
    total: int
    limit: int
    offset: int


class RolloutQuery(_Model):
    status: list[RolloutStatus] | None = None
    mode: RolloutMode | None = None
    group_id: str | None = None
    rollout_ids: list[str] | None = None
    limit: int = Field(default=100, ge=1, le=10_000)
    offset: int = Field(default=0, ge=0)
    with_attempts: bool = False


class WaitRequest(_Model):
    rollout_ids: list[str] = Field(min_length=1, max_length=10_000)
    timeout_s: float = Field(default=30.0, ge=0, le=600)


class WaitResult(_Model):
    finished: list[Rollout]
    pending: list[str]


class Health(_Model):
    status: Literal["ok"] = "ok"
    version: str
    store: str
    schema_version: int


# ---------------------------------------------------------------------------------------------
# Configuration


class ServerConfig(_Model):
    """Settings of the Lightning Server (``agentbolt serve``)."""

    host: str = Field(default="127.0.0.1", description="Interface to bind; non-loopback needs an API key.")
    port: int = Field(default=8420, ge=0, le=65535)
    store_url: str = Field(
        default="sqlite+aiosqlite:///agentbolt.db",
        description="sqlite+aiosqlite:///PATH or postgresql+asyncpg://USER@HOST:PORT/DB",
    )
    api_key: str | None = Field(default=None, repr=False, description="Required on every request but /health.")
    max_body_bytes: int = Field(default=32 * 1024 * 1024, ge=1024, description="Largest request body accepted.")
    watchdog_interval_s: float = Field(default=1.0, gt=0, description="How often timed-out attempts are swept.")
    # The OpenAI-compatible gateway (agentbolt/gateway); active when the server is given a model backend.
    served_model: str = Field(
        default="policy", min_length=1, max_length=500, description="Model name the gateway serves at /v1/models."
    )
    model: str | None = Field(
        default=None,
        description="Embedded engine's model: 'demo', a .gguf file, an HF directory or id; or the tokenizer's "
        "source when upstream_urls are given. None: no gateway.",
    )
    upstream_urls: list[str] = Field(
        default_factory=list, description="OpenAI-compatible engines (vLLM...) to forward to instead of embedding one."
    )
    upstream_model: str | None = Field(default=None, description="Model name the upstream engines serve.")
    upstream_api_key: str | None = Field(default=None, repr=False, description="API key of the upstream engines.")
    fixed_models: dict[str, str] = Field(
        default_factory=dict,
        description="Fixed models the gateway serves beside the policy, name -> model (like `model`), each on an "
        "embedded engine whose weights never change: for agents that call the gateway but are not trained. Their "
        "calls are traced (marked agentbolt.llm.fixed) and never become transitions.",
    )
    require_attempt: bool = Field(
        default=False, description="Refuse gateway calls that name no rollout attempt (else stored unattributed)."
    )
    strict_token_fidelity: bool = Field(
        default=False,
        description="Answer 409 when a call extends its attempt's previous conversation but its prompt token ids "
        "do not start with the previous prompt and response ids (else the span is flagged and counted).",
    )
    max_n: int = Field(default=16, ge=1, le=128, description="Largest `n` (choices per call) the gateway accepts.")
    default_max_tokens: int = Field(
        default=4096, ge=1, description="Response length limit of calls that give no max_tokens (within the context)."
    )
    span_flush_interval_s: float = Field(
        default=0.005, gt=0, le=10, description="Gateway spans are written in batches at most this far apart."
    )


class LLM(_Model):
    """What an agent function gets to reach the policy model: use it with any OpenAI-compatible client.

    ``base_url`` routes through the server's gateway with the attempt in the path, so every call is
    attributed to the rollout with no other change to the agent.
    """

    base_url: str
    model: str
    api_key: str = Field(repr=False)


# ---------------------------------------------------------------------------------------------
# Embedded inference engine (agentbolt/engine): one generation request and its result


class GenerationRequest(_Model):
    """One completion asked of the engine: prompt token ids in, sampled token ids out.

    ``temperature == 0`` means greedy decoding. Generation stops at the model's end-of-turn token(s),
    at any of ``stop_token_ids`` (the stop token is kept as the last response token, so the trainer
    sees the model choosing to stop), or after ``max_new_tokens``.
    """

    prompt_token_ids: list[int] = Field(min_length=1)
    max_new_tokens: int = Field(default=256, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=100.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stop_token_ids: list[int] = Field(default_factory=list)
    seed: int | None = Field(default=None, description="Same seed, prompt and weights: same tokens.")
    top_logprobs: int = Field(default=0, ge=0, le=20, description="Alternatives reported per position.")

    def check_fits(self, max_context: int, vocab_size: int) -> None:
        """Raise :class:`~agentbolt.errors.BadInput` when this request cannot run on a model with that context
        length and vocabulary size."""
        from agentbolt.errors import BadInput

        n = len(self.prompt_token_ids)
        if n + self.max_new_tokens > max_context:
            raise BadInput(
                f"prompt ({n} tokens) + max_new_tokens ({self.max_new_tokens}) exceeds the model's context "
                f"length of {max_context} tokens: shorten the prompt or lower max_new_tokens"
            )
        bad = [t for t in self.prompt_token_ids if not 0 <= t < vocab_size]
        if bad:
            raise BadInput(f"prompt_token_ids holds ids outside the vocabulary [0, {vocab_size}): {bad[:5]}")


class TokenLogprob(_Model):
    token_id: int
    logprob: float


class GenerationTimings(_Model):
    queued_s: float = Field(description="From submission until its batch started.")
    generation_s: float = Field(description="From its batch starting until its last token.")
    batch_size: int = Field(description="Sequences decoded together in its batch.")


class GenerationResult(_Model):
    """What the engine sampled, with what the RL trainer needs to use it.

    ``logprobs[i]`` is the log-probability of ``response_token_ids[i]`` under the sampling
    distribution before top-p truncation: ``log_softmax(logits / temperature)``, or
    ``log_softmax(logits)`` when greedy. ``model_version`` is the weights version it ran on.
    """

    response_token_ids: list[int]
    logprobs: list[float]
    top_logprobs: list[list[TokenLogprob]] | None = None
    finish_reason: Literal["stop", "length"]
    model_version: int
    timings: GenerationTimings
    token_source: Literal["engine", "retokenized"] = Field(
        default="engine", description="engine: ids came from the engine; retokenized: from tokenizing its text."
    )
    token_drift: int | None = Field(
        default=None, description="When retokenized: |len(ids) - tokens the engine reported|, if it reported any."
    )


# ---------------------------------------------------------------------------------------------
# Trainer (agentbolt/trainer/trainer.py): how the embedded trainer updates the policy, and its checkpoints

DEFAULT_LORA_TARGETS: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class LoraSettings(_Model):
    """A LoRA adapter (PEFT) trained instead of the full weights."""

    r: int = Field(default=16, ge=1, description="Rank of the low-rank update B @ A.")
    alpha: int = Field(default=32, ge=1, description="Scale of the update is alpha / r.")
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0, description="Dropout on the adapter's input.")
    target_modules: list[str] = Field(
        default_factory=lambda: list(DEFAULT_LORA_TARGETS),
        min_length=1,
        description="Names of the linear layers that get an adapter (Llama-style names by default).",
    )


class TrainerConfig(_Model):
    """Settings of the embedded policy trainer: optimiser, micro-batching, LoRA or full fine-tuning, checkpoints."""

    lr: float = Field(default=1e-5, gt=0, description="AdamW learning rate (after warm-up).")
    warmup_steps: int = Field(default=0, ge=0, description="Policy updates over which the lr rises linearly to lr.")
    weight_decay: float = Field(default=0.0, ge=0, description="AdamW decoupled weight decay.")
    betas: tuple[float, float] = Field(default=(0.9, 0.999), description="AdamW moment decay rates.")
    eps: float = Field(default=1e-8, gt=0, description="AdamW denominator epsilon.")
    grad_clip: float | None = Field(
        default=1.0, gt=0, description="Clip the global gradient norm to this; None: no clipping (norm still reported)."
    )
    micro_batch_tokens: int = Field(
        default=4096,
        ge=1,
        description="Token budget of one forward/backward: rows x padded length (prompt + response). "
        "A sample longer than the budget runs alone.",
    )
    ppo_epochs: int = Field(default=1, ge=1, description="Passes over each batch of samples per policy update.")
    mini_batches: int = Field(
        default=1, ge=1, description="Optimizer steps per pass: the batch is split into this many mini-batches."
    )
    lora: LoraSettings | None = Field(
        default=None, description="Train a LoRA adapter with these settings; None: fine-tune all weights."
    )
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        default="auto",
        description="Compute dtype (autocast; weights and optimizer state stay float32). "
        "auto: bfloat16 on CUDA, else float32.",
    )
    device: str | None = Field(default=None, description="cpu, cuda, cuda:1...; None: the first GPU if any, else cpu.")
    seed: int = Field(default=0, description="Seeds LoRA initialisation, dropout and mini-batch shuffling.")
    reference_model: str | None = Field(
        default=None,
        description="Frozen reference for the KL penalty (used when the loss's kl_coef > 0): a model spec as "
        "for load_tokenizer_and_model; None: the policy's starting weights (with LoRA, the base model "
        "with the adapter switched off).",
    )
    checkpoint_dir: str | None = Field(
        default=None, description="Where Trainer.save writes step-NNNNNN checkpoints when given no directory."
    )
    keep_checkpoints: int = Field(default=3, ge=1, description="Checkpoints kept in a directory; older ones deleted.")


class TrainerCheckpoint(_Model):
    """``trainer_state.json`` of a checkpoint: where the run was, and the settings it ran with."""

    format_version: int = 1
    step: int = Field(ge=0, description="Policy updates done.")
    model_version: int = Field(ge=0, description="Model version the saved weights are.")
    lora: bool = Field(description="True: the weights are a PEFT adapter (adapter/); False: a full model (model/).")
    config: TrainerConfig
    loss: dict[str, JSONValue] = Field(default_factory=dict, description="The loss settings, for the record.")
    created_at: float


# ---------------------------------------------------------------------------------------------
# Training data (agentbolt/adapter, agentbolt/credit, agentbolt/trainer): from spans to samples.
# adapter: a finished rollout's spans -> Episode (its Transitions); credit + AIR: Episode -> one
# return per transition; advantages: returns -> one advantage per transition; batch: -> Samples.


class RewardRecord(_Model):
    """One ``agentbolt.reward`` span, as recorded; the credit stage reduces it to a scalar."""

    value: float | None = Field(default=None, description="The primary scalar (agentbolt.reward.value), if given.")
    dimensions: dict[str, float] = Field(default_factory=dict, description="Named reward dimensions, if given.")
    primary: str | None = Field(default=None, description="Which dimension is the primary one.")
    final: bool = Field(default=True, description="The episode's final reward (True) or an intermediate one.")
    sequence_id: int = Field(default=0, description="Position of the reward span in its attempt.")


class ToolOutcome(_Model):
    """A tool call the agent ran after an LLM call: the raw material of AIR's tool-failure signal."""

    name: str | None = Field(default=None, description="gen_ai.tool.name.")
    call_id: str | None = Field(default=None, description="gen_ai.tool.call.id, if the agent recorded it.")
    success: bool = Field(
        default=True, description="agentbolt.tool.success; else False when the span's status is ERROR."
    )
    error: str | None = Field(default=None, description="The span's status message when it failed.")
    matched_by: Literal["call_id", "order"] = Field(
        default="order", description="call_id: the LLM call's tool_calls named this id; order: the span followed it."
    )


class Transition(_Model):
    """One policy-model call of an episode (one choice of one gateway LLM-call span) and the signals after it."""

    rollout_id: str
    attempt_id: str
    index: int = Field(description="Position among the episode's kept transitions (0-based, by sequence id).")
    span_id: str = Field(description="The gateway's LLM-call span.")
    sequence_id: int = Field(description="The LLM-call span's sequence id in its attempt.")
    prompt_token_ids: list[int] = Field(description="Exactly what the engine was fed.")
    response_token_ids: list[int] = Field(description="Exactly what it sampled.")
    logprobs: list[float] = Field(description="Behaviour log-probability of each response token.")
    temperature: float = Field(
        default=1.0,
        gt=0,
        description="Temperature the logprobs are taken at: log_softmax(logits / temperature); "
        "a greedy call (temperature 0) has logprobs at temperature 1.",
    )
    model: str | None = Field(default=None, description="Model name the call asked for (or got).")
    model_version: int | None = Field(default=None, description="Weights version that produced the response.")
    agent_name: str | None = Field(default=None, description="The agent that made the call, if known.")
    agent_source: Literal["header", "parent", "time"] | None = Field(
        default=None, description="Which rule found agent_name (see agentbolt.adapter)."
    )
    finish_reason: str | None = Field(default=None, description="stop, length or tool_calls.")
    token_source: str = Field(default="engine", description="engine, or retokenized (ids rebuilt from text).")
    tool_calls_requested: int = Field(default=0, description="Tool calls the response asked for.")
    tool_outcomes: list[ToolOutcome] = Field(default_factory=list, description="Tool calls run because of it.")
    tool_call_malformed: bool = Field(default=False, description="The gateway could not parse its tool call.")
    exceptions: list[str] = Field(
        default_factory=list, description="Types of exceptions the agent recorded after it, before the next call."
    )
    rewards: list[RewardRecord] = Field(
        default_factory=list, description="Intermediate rewards (final=False) that followed it."
    )
    signal_span_ids: list[str] = Field(
        default_factory=list, description="Client spans placed after this call, before the next one (for AIR rules)."
    )

    @property
    def truncated(self) -> bool:
        """The response was cut off by the token limit."""
        return self.finish_reason == "length"


class Episode(_Model):
    """The transitions of one rollout's last attempt, with what credit assignment needs."""

    rollout_id: str
    attempt_id: str
    group_id: str | None = None
    attempt_status: AttemptStatus | None = Field(default=None, description="None when the attempts were not given.")
    transitions: list[Transition] = Field(default_factory=list)
    final_reward: RewardRecord | None = Field(default=None, description="The attempt's last final reward span.")
    rollout_reward: float | None = Field(default=None, description="Rollout.reward, the fallback final reward.")
    uncaught_exception: str | None = Field(default=None, description="Type of the exception that ended the attempt.")
    spans: list[Span] = Field(default_factory=list, description="The attempt's spans by sequence id (for AIR rules).")

    @property
    def timed_out(self) -> bool:
        return self.attempt_status is AttemptStatus.TIMEOUT

    def spans_following(self, transition: Transition) -> list[Span]:
        """The client spans (tools, rewards, exceptions...) the adapter placed after ``transition``."""
        wanted = set(transition.signal_span_ids)
        return [s for s in self.spans if s.span_id in wanted]


class Sample(_Model):
    """One transition ready for the policy loss: tokens, behaviour logprobs and its advantage."""

    rollout_id: str
    attempt_id: str
    group_id: str | None = None
    agent_name: str | None = None
    transition_index: int = Field(description="Transition.index within its episode.")
    prompt_token_ids: list[int]
    response_token_ids: list[int]
    old_logprobs: list[float] = Field(description="Behaviour logprobs from the gateway, one per response token.")
    temperature: float = Field(
        default=1.0, gt=0, description="The trainer scores tokens at this temperature, as the engine sampled them."
    )
    advantage: float
    return_value: float = Field(description="The transition's return from credit assignment (before baselines).")
    model_version: int | None = None


class BatchReport(_Model):
    """What prepare_batch kept, dropped (by reason) and computed; ``metrics()`` flattens it for logging."""

    rollouts_total: int = 0
    rollouts_used: int = Field(default=0, description="Rollouts that gave at least one sample.")
    rollouts_dropped: dict[str, int] = Field(default_factory=dict, description="Rollouts without samples, by reason.")
    earlier_attempts_dropped: int = Field(default=0, description="Attempts before each rollout's last one.")
    earlier_attempt_spans_dropped: int = 0
    transitions_kept: int = 0
    transitions_dropped: dict[str, int] = Field(
        default_factory=dict, description="LLM calls not trained on, by reason."
    )
    transitions_retokenized: int = Field(default=0, description="Kept transitions whose ids came from re-tokenizing.")
    rewards_unattributed: int = Field(default=0, description="Intermediate rewards before the first kept transition.")
    rewards_invalid: int = Field(default=0, description="Reward spans without a usable number (ignored).")
    groups_total: int = 0
    groups_skipped: int = Field(default=0, description="Groups whose episode returns were all equal (no signal).")
    reward_mean: float | None = Field(default=None, description="Mean final reward over rollouts that had one.")
    reward_std: float | None = None
    return_mean: float | None = Field(default=None, description="Mean episode return (final + intermediate + AIR).")
    return_std: float | None = None
    advantage_mean: float | None = Field(default=None, description="Mean advantage over samples.")
    advantage_abs_mean: float | None = None
    agents: dict[str, int] = Field(default_factory=dict, description="Kept transitions per agent ('' = unknown).")
    agent_sources: dict[str, int] = Field(default_factory=dict, description="How agent names were found.")
    air: dict[str, float] = Field(default_factory=dict, description="Sum of AIR rewards, per signal.")
    air_counts: dict[str, int] = Field(default_factory=dict, description="Transitions that got each AIR signal.")
    samples: int = 0
    prompt_tokens: int = 0
    response_tokens: int = 0

    def metrics(self) -> dict[str, float]:
        """Flat ``{name: number}`` for console/JSONL/TensorBoard; absent statistics are left out."""
        out: dict[str, float] = {
            "rollouts/total": self.rollouts_total,
            "rollouts/used": self.rollouts_used,
            "rollouts/earlier_attempts_dropped": self.earlier_attempts_dropped,
            "transitions/kept": self.transitions_kept,
            "transitions/dropped": sum(self.transitions_dropped.values()),
            "transitions/retokenized": self.transitions_retokenized,
            "rewards/unattributed": self.rewards_unattributed,
            "rewards/invalid": self.rewards_invalid,
            "groups/total": self.groups_total,
            "groups/skipped": self.groups_skipped,
            "groups/skipped_frac": self.groups_skipped / self.groups_total if self.groups_total else 0.0,
            "samples": self.samples,
            "tokens/prompt": self.prompt_tokens,
            "tokens/response": self.response_tokens,
        }
        out.update({f"rollouts/dropped/{k}": v for k, v in self.rollouts_dropped.items()})
        out.update({f"transitions/dropped/{k}": v for k, v in self.transitions_dropped.items()})
        out.update({f"agents/{k or 'unknown'}": v for k, v in self.agents.items()})
        out.update({f"air/{k}": v for k, v in self.air.items()})
        out.update({f"air_count/{k}": v for k, v in self.air_counts.items()})
        stats = {
            "reward/mean": self.reward_mean,
            "reward/std": self.reward_std,
            "return/mean": self.return_mean,
            "return/std": self.return_std,
            "advantage/mean": self.advantage_mean,
            "advantage/abs_mean": self.advantage_abs_mean,
        }
        out.update({k: v for k, v in stats.items() if v is not None})
        return {k: float(v) for k, v in out.items()}


class AdapterConfig(_Model):
    """Which LLM calls become transitions (agentbolt.adapter)."""

    agents: list[str] | None = Field(
        default=None,
        description="Train only the calls of these agents: names or fnmatch patterns ('planner', 'coder-*'). "
        "None: every call, including calls with no known agent.",
    )
    models: list[str] | None = Field(
        default=None,
        description="Keep only calls whose requested or served model matches one of these names/fnmatch patterns; "
        "None: every gateway call.",
    )
    max_prompt_tokens: int | None = Field(
        default=None, ge=1, description="Drop calls whose prompt is longer (not truncated); None: no limit."
    )
    max_response_tokens: int | None = Field(
        default=None, ge=1, description="Drop calls whose response is longer (not truncated); None: no limit."
    )
    drop_retokenized: bool = Field(
        default=False, description="Drop calls whose token ids were rebuilt from text, not taken from the engine."
    )
    signal_order: Literal["sequence", "clock"] = Field(
        default="clock",
        description="How client spans (tools, rewards, exceptions) are placed between LLM calls: clock: by start "
        "time vs each call's end time (right when the gateway and the workers share a clock, as in agentbolt "
        "train); sequence: by the store's sequence ids (arrival order: wrong when the worker's batched span "
        "export lands after the next LLM call). Tool calls with a tool call id are matched by id either way.",
    )


class CreditConfig(_Model):
    """How an episode's rewards become one return per transition (LightningRL, agentbolt.credit)."""

    strategy: Literal["broadcast", "discounted", "final_only"] = Field(
        default="broadcast",
        description="broadcast: every transition gets the episode return (final + all intermediate rewards); "
        "discounted: R_t = sum_{k>=t} gamma^(k-t) r_k + gamma^(T-1-t) final; final_only: each transition its own "
        "intermediate rewards, the last one also the final reward.",
    )
    gamma: float = Field(default=1.0, ge=0.0, le=1.0, description="Discount per transition (discounted only).")
    reward_weights: dict[str, float] | None = Field(
        default=None,
        description="Reduce multi-dimensional rewards to sum(weight * dimension) (missing dimensions count 0); "
        "None: use each reward's primary value. A reward without dimensions is its value either way.",
    )
    missing_reward: float | None = Field(
        default=None,
        description="Final reward of a rollout that reported none (no final reward span, no Rollout.reward); "
        "None: such rollouts are dropped and counted as no_reward.",
    )
    timeout_reward: float | None = Field(
        default=0.0,
        description="Final reward of an attempt that timed out without reporting one (so AIR's timeout penalty can "
        "act); None: handled like any missing reward.",
    )


class AIRConfig(_Model):
    """Automatic Intermediate Rewarding: reward added to a transition per runtime signal (0 disables one).

    Defaults are small against final rewards in [0, 1]: they steer credit between calls without
    swamping the task's outcome.
    """

    enabled: bool = Field(default=True, description="False: no AIR rewards at all (user rules included).")
    tool_failure: float = Field(
        default=-0.1, description="Per failed or raising tool call, to the LLM call that requested it."
    )
    malformed_tool_call: float = Field(
        default=-0.1, description="To a call whose tool call the gateway could not parse."
    )
    exception: float = Field(
        default=-0.1,
        description="Per exception the agent recorded after a call (emit_exception), and to the last call of an "
        "attempt ended by an uncaught exception.",
    )
    truncation: float = Field(default=-0.1, description="To a call whose response hit the token limit.")
    timeout: float = Field(default=-0.2, description="To the last call of an attempt that timed out.")


class AdvantageConfig(_Model):
    """How returns become advantages (agentbolt.trainer.advantages), always with one vote per rollout."""

    estimator: Literal["grpo", "rloo", "reinforce_pp"] = Field(
        default="grpo",
        description="grpo: (R - group mean) / group std; rloo: R - mean of the other rollouts of the group; "
        "reinforce_pp: (R - batch mean) / batch std, no groups.",
    )
    normalize_std: bool = Field(
        default=True, description="Divide by the std of episode returns (grpo, reinforce_pp); rloo never does."
    )
    eps: float = Field(default=1e-6, gt=0, description="Added to the std before dividing.")


class LossConfig(_Model):
    """The token-level PPO-clip objective (agentbolt.trainer.loss)."""

    clip_low: float = Field(default=0.2, ge=0.0, lt=1.0, description="The ratio is clipped below at 1 - clip_low.")
    clip_high: float = Field(
        default=0.2, ge=0.0, description="The ratio is clipped above at 1 + clip_high (DAPO uses 0.28)."
    )
    kl_coef: float = Field(default=0.0, ge=0.0, description="Weight of the k3 KL penalty to the reference model.")
    aggregation: Literal["token_mean", "seq_mean", "rollout_mean"] = Field(
        default="rollout_mean",
        description="How token losses are weighted: token_mean: every token alike; seq_mean: every transition "
        "alike; rollout_mean: every rollout alike, whatever its number of calls and tokens.",
    )


class RLConfig(_Model):
    """Everything between stored spans and the policy loss."""

    adapter: AdapterConfig = Field(default_factory=AdapterConfig)
    credit: CreditConfig = Field(default_factory=CreditConfig)
    air: AIRConfig = Field(default_factory=AIRConfig)
    advantage: AdvantageConfig = Field(default_factory=AdvantageConfig)
    loss: LossConfig = Field(default_factory=LossConfig)


# ---------------------------------------------------------------------------------------------
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
    tool_call_id: str | None = None
    # Echoed back by clients that append a returned message as is; only empty values are accepted.
    refusal: str | None = None
    annotations: list[JSONValue] | None = None
    audio: None = Field(default=None, description="Not supported; must be absent or null.")
    function_call: None = Field(default=None, description="Not supported (use tool_calls); absent or null.")

    @model_validator(mode="after")
    def _role_rules(self) -> ChatMessage:
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a message with role 'tool' needs 'tool_call_id'")
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
        if len(stops) > 16 or any(not s for s in stops):
            raise ValueError("stop must be at most 16 non-empty strings")
        return v

    def stop_strings(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


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
    spans_pending: int = Field(description="Spans waiting for their batched write.")
    spans_dropped: int = Field(description="Spans the store refused or could not take after retries (logged).")
    fidelity_checked: int
    fidelity_mismatches: int


# ---------------------------------------------------------------------------------------------
# `agentbolt train`: one YAML file (every field has a default), overridden by CLI flags


class TaskSource(_Model):
    """Where one split's tasks come from: a JSONL file (one task per line) or a Python function."""

    file: str | None = Field(default=None, description="JSONL file, one task (any JSON value) per line.")
    function: str | None = Field(
        default=None, description="MODULE:FUNCTION returning a list of tasks; called with `kwargs`."
    )
    kwargs: dict[str, JSONValue] = Field(default_factory=dict, description="Keyword arguments of `function`.")
    limit: int | None = Field(default=None, ge=1, description="Use at most this many tasks.")

    @model_validator(mode="after")
    def _one_source(self) -> TaskSource:
        if (self.file is None) == (self.function is None):
            raise ValueError("give exactly one of `file` or `function`")
        return self


class EngineConfig(_Model):
    """The embedded inference engine of `agentbolt train`."""

    device: str | None = Field(default=None, description="cpu, cuda, cuda:1...; default: a GPU if any, else the CPU.")
    max_batch_size: int = Field(default=64, ge=1, description="Most sequences decoded together.")
    batch_wait_s: float = Field(default=0.01, ge=0, description="How long a batch waits for more requests to join.")


class TrainConfig(_Model):
    """Settings of `agentbolt train`: the agent, its tasks, the model, and how to train it.

    Paths are relative to the directory `agentbolt train` runs in.
    """

    name: str = Field(default="run", pattern=r"^[A-Za-z0-9._-]+$", description="Run name; default run dir runs/NAME.")
    agent: str = Field(description="The agent function, MODULE:FUNCTION (decorated with @agentbolt.rollout).")
    model: str = Field(
        default="demo",
        description="'demo' (SmolLM2-135M-Instruct), 'tiny' (a tiny random model, for tests), a .gguf file, "
        "a local model directory, or a Hugging Face id.",
    )
    served_model_name: str = Field(default="policy", description="Model name the gateway serves the policy as.")
    fixed_models: dict[str, str] = Field(
        default_factory=dict,
        description="Fixed models the gateway serves beside the policy, name -> model (like `model`), each on an "
        "embedded engine whose weights never change: for agents that call the gateway but are not trained. Their "
        "calls are traced (marked agentbolt.llm.fixed) and never become transitions.",
    )
    train_tasks: TaskSource = Field(description="Training tasks.")
    val_tasks: TaskSource | None = Field(default=None, description="Held-out tasks for validation; None skips it.")
    steps: int = Field(default=20, ge=0, description="Policy updates to run.")
    tasks_per_step: int = Field(default=8, ge=1, description="Tasks drawn per step (each becomes one group).")
    group_size: int = Field(default=8, ge=1, description="Rollouts per task: a GRPO group.")
    val_every: int = Field(
        default=5,
        ge=0,
        description="Validate every this many steps, and before the first and after the last; 0: only those two.",
    )
    val_success_threshold: float = Field(
        default=1.0, description="A validation rollout with reward >= this counts as a success (accuracy)."
    )
    workers: int = Field(default=1, ge=1, description="Worker processes running the agent.")
    worker_concurrency: int = Field(default=16, ge=1, description="Rollouts each worker process runs at once.")
    rollout_timeout_s: float = Field(default=300.0, gt=0, description="Wall-clock limit of one attempt.")
    max_staleness: int = Field(
        default=0,
        ge=0,
        description="0: synchronous on-policy (collect, then train). k>0: keep collecting the next batches while "
        "training, with rollouts at most k model versions behind the weights being trained.",
    )
    seed: int = Field(default=0, description="Seeds task sampling and the trainer.")
    run_dir: str | None = Field(
        default=None, description="Where metrics, checkpoints and the store go; default runs/NAME."
    )
    resume: bool = Field(default=False, description="Resume from the run dir's latest checkpoint when there is one.")
    checkpoint_every: int = Field(
        default=0, ge=0, description="Save a checkpoint every this many steps (0: only at the end)."
    )
    tensorboard: bool = Field(default=True, description="Also write TensorBoard event files.")
    engine: EngineConfig = Field(default_factory=EngineConfig)
    rl: RLConfig = Field(default_factory=RLConfig)
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
