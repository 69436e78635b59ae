"""Settings: the server's, the embedded trainer's, and `agentbolt train`'s YAML file."""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field, model_validator

from agentbolt.types.base import POLICY_MODEL, JSONValue, _Model
from agentbolt.types.rl import RLConfig

# How the gateway writes tools into prompts (agentbolt/gateway/tools.py): auto picks by model family.
ToolFormatSetting = Literal["auto", "hermes", "pythonic"]
# When gateway spans are durable (SpanDurability); auto picks by store: PostgreSQL answer, SQLite finish.
SpanDurabilitySetting = Literal["auto", "answer", "finish"]


class ServerConfig(_Model):
    """Settings of the Lightning Server (``agentbolt serve``)."""

    host: str = Field(default="127.0.0.1", description="Interface to bind; non-loopback needs an API key.")
    port: int = Field(default=8420, ge=0, le=65535)
    store_url: str = Field(
        default="sqlite:///agentbolt.db",
        description="sqlite:///PATH (sqlite+aiosqlite:///PATH is accepted too) or postgresql+asyncpg://USER@HOST:PORT/DB",
    )
    api_key: str | None = Field(default=None, repr=False, description="Required on every request but /health.")
    max_body_bytes: int = Field(default=32 * 1024 * 1024, ge=1024, description="Largest request body accepted.")
    watchdog_interval_s: float = Field(default=1.0, gt=0, description="How often timed-out attempts are swept.")
    # The OpenAI-compatible gateway (agentbolt/gateway); active when the server is given a model backend.
    served_model: str = Field(
        default=POLICY_MODEL, min_length=1, max_length=500, description="Model name the gateway serves at /v1/models."
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
    upstream_logprobs_mode: Literal["raw", "processed"] = Field(
        default="raw",
        description="The upstreams' --logprobs-mode (vLLM's default raw_logprobs is right only at temperature 1; "
        "processed_logprobs at any temperature with top_p 1): calls whose logprobs would be wrong are recorded "
        "without them.",
    )
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
    tool_format: ToolFormatSetting = Field(
        default="auto",
        description="How tools are written into the prompt of a model whose chat template has none, and how its "
        "calls are read back: hermes (<tool_call>{json}</tool_call>), pythonic ([name(arg=value)]), or auto: each "
        "served model by its family (SmolLM2: pythonic; any other: hermes; table in agentbolt/gateway/tools.py).",
    )
    max_n: int = Field(default=16, ge=1, le=128, description="Largest `n` (choices per call) the gateway accepts.")
    default_max_tokens: int = Field(
        default=4096, ge=1, description="Response length limit of calls that give no max_tokens (within the context)."
    )
    span_flush_interval_s: float = Field(
        default=0.005,
        gt=0,
        le=10,
        description="With finish durability, gateway spans are written in batches at most this far apart.",
    )
    span_durability: SpanDurabilitySetting = Field(
        default="auto",
        description="When a gateway call's spans are durable. answer: before the call is answered (commits still "
        "grouped: one serves every call that came while the last one ran), so a finish through any server process "
        "finds them; finish: the call is answered at once and its spans written within span_flush_interval_s, "
        "and finishing its attempt *on this process* flushes them. auto: answer on PostgreSQL (several server "
        "processes may share the store), finish on SQLite (one process).",
    )


class LLM(_Model):
    """What an agent function gets to reach the policy model: use it with any OpenAI-compatible client.

    ``base_url`` routes through the server's gateway with the attempt in the path, so every call is
    attributed to the rollout with no other change to the agent.
    """

    base_url: str
    model: str
    api_key: str = Field(repr=False)


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


TrainerBackend = Literal["embedded", "verl"]


class TrainerConfig(_Model):
    """Settings of the policy trainer: which backend, optimiser, micro-batching, LoRA or full fine-tuning, checkpoints.

    The fields below ``backend`` and ``verl`` are the embedded trainer's; the VeRL backend takes its own
    settings in ``verl`` (VeRL's names, passed through) and reads only ``lr``, ``seed`` and ``lora`` here.
    """

    backend: TrainerBackend = Field(
        default="embedded",
        description="embedded: PyTorch in the run's process, on one device. verl: VeRL's Ray workers (FSDP actor) "
        "do the update and serve rollouts from their vLLM/SGLang replicas (the `verl` extra; see docs/cluster.md).",
    )
    verl: dict[str, JSONValue] = Field(
        default_factory=dict,
        description="With backend verl: overrides of VeRL's own config (its dotted names, e.g. "
        "'actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu': 4, 'trainer.n_gpus_per_node': 8), passed "
        "through unchanged.",
    )
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
        description="Token budget of one forward/backward: rows x padded length (prompt + response); with "
        "shared prompts, prompts x padded prompt length + rows x padded response length. A sample longer than "
        "the budget runs alone.",
    )
    share_prompts: bool = Field(
        default=True,
        description="Run a prompt that several samples of a batch share (a GRPO group's) once per micro-batch and "
        "their responses against its KV cache: the same log-probabilities and gradients as running each sample "
        "whole (to float rounding), for 1/group of the prompt's compute. Used where a check at start-up finds it "
        "exact for the model; LoRA dropout then draws one mask for the shared prompt's tokens. false: every "
        "sample runs whole.",
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


class VllmEngineSettings(_Model):
    """Rollouts on running ``vllm serve`` replicas (``engine.backend: vllm``) and how trained weights reach them.

    Start each replica from the same model, e.g. ``VLLM_SERVER_DEV_MODE=1 vllm serve MODEL --logprobs-mode
    processed_logprobs`` (plus ``--enable-lora`` and ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=1`` for ``lora``, or
    ``--weight-transfer-config '{"backend": "nccl"}'`` for ``nccl``); docs/cluster.md has the whole recipe.
    """

    urls: list[str] = Field(min_length=1, description="The replicas' base URLs, e.g. http://gpu1:8000/v1.")
    model: str | None = Field(
        default=None,
        description="The model name the replicas serve (vllm serve's model or --served-model-name); "
        "default the train config's `model`.",
    )
    api_key: str | None = Field(default=None, repr=False, description="The replicas' API key (vllm serve --api-key).")
    weight_sync: Literal["disk", "lora", "nccl"] = Field(
        default="disk",
        description="How each new version reaches the replicas: disk (safetensors in weights_dir, then vLLM's "
        "reload_weights), lora (the adapter in weights_dir, loaded in place over /v1/load_lora_adapter; needs "
        "trainer.lora), nccl (vLLM's native NCCL weight transfer, GPU to GPU; needs vllm beside the trainer).",
    )
    weights_dir: str | None = Field(
        default=None,
        description="Where disk/lora write each version (the replicas read the same path); default RUN_DIR/weights.",
    )
    lora_name: str = Field(default="agentbolt-policy", min_length=1, description="The adapter's name on the replicas.")
    nccl_master: str = Field(
        default="127.0.0.1:29600", description="host:port the trainer opens for NCCL weight transfer (nccl)."
    )
    logprobs_mode: Literal["raw", "processed"] = Field(
        default="processed",
        description="The replicas' --logprobs-mode: processed (processed_logprobs, right at any temperature with "
        "top_p 1) or raw (raw_logprobs, vLLM's default: right only at temperature 1). Calls whose logprobs would "
        "be wrong are recorded without them.",
    )


class EngineConfig(_Model):
    """What serves the policy's rollouts in `agentbolt train`: the embedded engine, or vLLM servers."""

    backend: Literal["embedded", "vllm"] = Field(
        default="embedded",
        description="embedded: agentbolt's engine in the run's process. vllm: `vllm serve` replicas at `urls`, "
        "sent the new weights after each update (see `weight_sync`).",
    )
    device: str | None = Field(default=None, description="cpu, cuda, cuda:1...; default: a GPU if any, else the CPU.")
    max_batch_size: int = Field(default=64, ge=1, description="Most sequences decoded together.")
    batch_wait_s: float = Field(default=0.01, ge=0, description="How long a batch waits for more requests to join.")
    continuous_batching: bool = Field(
        default=True,
        description="Requests queued while a batch decodes join it between steps; false: they wait for it to "
        "finish (static batching).",
    )
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        default="auto", description="Embedded engine's compute dtype; auto: bfloat16 on CUDA, else float32."
    )
    vllm: VllmEngineSettings | None = Field(default=None, description="The replicas, with backend vllm.")
    share_weights: bool = Field(
        default=True,
        description="Embedded engine on the trainer's device: decode with the trainer's own model (one copy of the "
        "weights; generation pauses during each update). false: the engine keeps its own copy and is sent the "
        "weights after each update, so collection can overlap the update (max_staleness > 0).",
    )


class RunServerSettings(_Model):
    """The Lightning Server `agentbolt train` starts: where it listens and which store it writes to.

    The defaults keep everything on this machine (loopback, SQLite in the run directory). For agents on other
    machines (``workers: 0`` and ``agentbolt worker ... --server URL`` there), listen on a reachable address with
    an API key, and use PostgreSQL to run several server processes (docs/cluster.md).
    """

    host: str = Field(default="127.0.0.1", description="Interface to bind; any but loopback needs an api_key.")
    port: int = Field(default=0, ge=0, le=65535, description="Port to listen on; 0: a free one.")
    store_url: str | None = Field(
        default=None, description="sqlite:///PATH or postgresql+asyncpg://...; default sqlite:///RUN_DIR/agentbolt.db."
    )
    api_key: str | None = Field(
        default=None, repr=False, description="Required on every request; default the AGENTBOLT_API_KEY variable."
    )


class TrainConfig(_Model):
    """Settings of `agentbolt train`: the agent, its tasks, the model, and how to train it.

    Raises (validation): ``engine.backend: vllm`` without ``engine.vllm``; ``weight_sync: lora`` without
    ``trainer.lora``.

    Paths are relative to the directory `agentbolt train` runs in.
    """

    name: str = Field(default="run", pattern=r"^[A-Za-z0-9._-]+$", description="Run name; default run dir runs/NAME.")
    agent: str = Field(description="The agent function, MODULE:FUNCTION (decorated with @agentbolt.rollout).")
    model: str = Field(
        default="demo",
        description="'demo' (SmolLM2-135M-Instruct), 'tiny' (a tiny random model, for tests), a .gguf file, "
        "a local model directory, or a Hugging Face id.",
    )
    served_model: str = Field(
        default=POLICY_MODEL,
        min_length=1,
        validation_alias=AliasChoices("served_model", "served_model_name"),  # the field's name before 0.2
        description="Model name the gateway serves the policy as.",
    )
    tool_format: ToolFormatSetting = Field(
        default="auto",
        description="How the gateway writes tools into the prompt of a model without a tool chat template: "
        "hermes, pythonic, or auto (by model family: SmolLM2 pythonic, others hermes); see ServerConfig.",
    )
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
    workers: int = Field(
        default=1,
        ge=0,
        description="Worker processes the run starts for the agent; 0: none (workers elsewhere connect to `server`).",
    )
    worker_concurrency: int = Field(default=16, ge=1, description="Rollouts each worker process runs at once.")
    rollout_timeout_s: float = Field(default=300.0, gt=0, description="Wall-clock limit of one attempt.")
    max_staleness: int | None = Field(
        default=None,
        ge=0,
        description="0: synchronous on-policy (collect, then train). k>0: keep collecting the next batches while "
        "training, with rollouts at most k model versions behind the weights being trained (the PPO ratio against "
        "the behaviour logprobs corrects for it). None: 1 where rollouts are served from weights of their own "
        "(engine.share_weights false, vLLM replicas), so collection overlaps the update; 0 where the engine decodes "
        "with the trainer's own weights or VeRL's hybrid replicas sleep during the update (nothing can overlap).",
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
    server: RunServerSettings = Field(default_factory=RunServerSettings)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    rl: RLConfig = Field(default_factory=RLConfig)
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)

    @model_validator(mode="after")
    def _backends_fit(self) -> TrainConfig:
        vllm = self.engine.vllm
        if self.engine.backend == "vllm" and vllm is None:
            raise ValueError("engine.backend vllm needs engine.vllm (at least `urls`)")
        if self.engine.backend == "vllm" and vllm is not None and vllm.weight_sync == "lora" and not self.trainer.lora:
            raise ValueError("engine.vllm.weight_sync lora needs trainer.lora (the adapter is what is sent)")
        if self.engine.backend == "vllm" and vllm is not None and vllm.weight_sync == "nccl" and self.trainer.lora:
            raise ValueError(
                "engine.vllm.weight_sync nccl sends full weights under the base model's names; with trainer.lora "
                "use weight_sync lora (the adapter) or disk (the merged model)"
            )
        return self
