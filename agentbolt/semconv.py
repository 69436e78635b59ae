"""Span names and attribute keys agentbolt writes and reads.

Where the OpenTelemetry GenAI semantic conventions define a name we use it (``gen_ai.*``);
agentbolt's own keys live under ``agentbolt.*``.
"""

# Attribution: which rollout/attempt a span belongs to. Read from span attributes first,
# then from resource attributes.
ROLLOUT_ID = "agentbolt.rollout_id"
ATTEMPT_ID = "agentbolt.attempt_id"

# Span names written by the client.
SPAN_ATTEMPT = "agentbolt.attempt"  # root span of one attempt
# Attributes of the attempt's root span (SPAN_ATTEMPT).
ATTEMPT_NUMBER = "agentbolt.attempt.number"  # int: 1 for the first try of a rollout
AGENT_FUNCTION = "agentbolt.agent_function"  # str: the @rollout function's name
ROLLOUT_MODE = "agentbolt.rollout.mode"  # "train" | "val" | "test"
SPAN_REWARD = "agentbolt.reward"
SPAN_EXCEPTION = "agentbolt.exception"
SPAN_MESSAGE = "agentbolt.message"
SPAN_ANNOTATION = "agentbolt.annotation"

# Rewards.
REWARD_VALUE = "agentbolt.reward.value"  # the primary scalar
REWARD_DIMENSIONS = "agentbolt.reward.dimensions"  # JSON object {name: value}
REWARD_PRIMARY = "agentbolt.reward.primary"
REWARD_FINAL = "agentbolt.reward.final"  # bool: the episode's final reward

# Messages and annotations.
MESSAGE_TEXT = "agentbolt.message.text"
ANNOTATION_PREFIX = "agentbolt.annotation."

# Exceptions (OTel's exception semantic conventions).
EXCEPTION_TYPE = "exception.type"
EXCEPTION_MESSAGE = "exception.message"
EXCEPTION_STACKTRACE = "exception.stacktrace"
EXCEPTION_EVENT = "exception"  # name of the span event OTel's record_exception adds

# GenAI semantic conventions: agents and tools.
GEN_AI_OPERATION = "gen_ai.operation.name"  # "invoke_agent", "execute_tool", "chat", ...
OP_INVOKE_AGENT = "invoke_agent"  # GEN_AI_OPERATION of a span that scopes one agent's work
OP_EXECUTE_TOOL = "execute_tool"  # GEN_AI_OPERATION of one tool call
GEN_AI_AGENT_NAME = "gen_ai.agent.name"
GEN_AI_TOOL_NAME = "gen_ai.tool.name"
GEN_AI_TOOL_CALL_ID = "gen_ai.tool.call.id"
TOOL_ARGUMENTS = "gen_ai.tool.call.arguments"
TOOL_RESULT = "gen_ai.tool.call.result"
TOOL_SUCCESS = "agentbolt.tool.success"  # bool: the AIR signal for tool-call status

# Resource attributes.
SERVICE_NAME = "service.name"  # OpenTelemetry's resource key
WORKER_ID = "agentbolt.worker_id"  # the worker that ran the attempt

# ---------------------------------------------------------------------------------------------
# LLM calls recorded by the gateway: one span per choice of each call (a call with n=4 writes four
# spans sharing gen_ai.response.id). The span name is "chat {model}" / "text_completion {model}"
# (GenAI conventions); the adapter recognises LLM-call spans by GEN_AI_OPERATION in LLM_OPERATIONS
# together with LLM_RESPONSE_TOKEN_IDS being present.
LLM_OPERATIONS = ("chat", "text_completion")
GEN_AI_SYSTEM = "gen_ai.system"  # "agentbolt" for the embedded engine, "openai" for an upstream
GEN_AI_REQUEST_MODEL = "gen_ai.request.model"
GEN_AI_REQUEST_MAX_TOKENS = "gen_ai.request.max_tokens"
GEN_AI_REQUEST_TEMPERATURE = "gen_ai.request.temperature"
GEN_AI_REQUEST_TOP_P = "gen_ai.request.top_p"
GEN_AI_REQUEST_SEED = "gen_ai.request.seed"
GEN_AI_RESPONSE_ID = "gen_ai.response.id"
GEN_AI_RESPONSE_MODEL = "gen_ai.response.model"
GEN_AI_RESPONSE_FINISH_REASONS = "gen_ai.response.finish_reasons"  # list[str]: ["stop"|"length"|"tool_calls"]
GEN_AI_USAGE_INPUT_TOKENS = "gen_ai.usage.input_tokens"
GEN_AI_USAGE_OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
GEN_AI_INPUT_MESSAGES = "gen_ai.input.messages"  # JSON string: the request's messages (or prompt)
GEN_AI_OUTPUT_MESSAGES = "gen_ai.output.messages"  # JSON string: the returned message of this choice

LLM_PREFIX = "agentbolt.llm."  # every key below starts with it: a span carrying one was written by the gateway
LLM_PROMPT_TOKEN_IDS = "agentbolt.llm.prompt_token_ids"  # list[int]: exactly what the engine was fed
LLM_RESPONSE_TOKEN_IDS = "agentbolt.llm.response_token_ids"  # list[int]: exactly what it produced
LLM_RESPONSE_LOGPROBS = "agentbolt.llm.response_logprobs"  # list[float], one per response token
LLM_MODEL_VERSION = "agentbolt.llm.model_version"  # int: weights version that produced the response
LLM_TOKEN_SOURCE = "agentbolt.llm.token_source"  # "engine" | "retokenized"
LLM_TOKEN_DRIFT = "agentbolt.llm.token_drift"  # int: when retokenized, |ids| difference vs the engine's count
LLM_CHOICE_INDEX = "agentbolt.llm.choice_index"  # int
LLM_TOOL_CALLS = "agentbolt.llm.tool_calls"  # JSON string: OpenAI tool_calls parsed from the response
LLM_TOOL_CALL_MALFORMED = "agentbolt.llm.tool_call_malformed"  # bool: tried to call a tool, unparseable
LLM_TOOL_CALL_ERROR = "agentbolt.llm.tool_call_error"  # str: why the tool call did not parse
LLM_LATENCY_S = "agentbolt.llm.latency_s"  # float: request received -> response complete
LLM_STREAM = "agentbolt.llm.stream"  # bool
LLM_AGENT_NAME = "agentbolt.llm.agent_name"  # str: agent named by the X-Agentbolt-Agent header, if any
LLM_FIDELITY_MISMATCH = "agentbolt.llm.fidelity_mismatch"  # bool: prompt did not extend the previous turn's ids
LLM_FIXED = "agentbolt.llm.fixed"  # bool: served by a fixed (never trained) model, not the policy; absent = policy
