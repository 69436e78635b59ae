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

# GenAI semantic conventions: agents and tools.
GEN_AI_OPERATION = "gen_ai.operation.name"  # "invoke_agent", "execute_tool", "chat", ...
GEN_AI_AGENT_NAME = "gen_ai.agent.name"
GEN_AI_TOOL_NAME = "gen_ai.tool.name"
GEN_AI_TOOL_CALL_ID = "gen_ai.tool.call.id"
TOOL_ARGUMENTS = "gen_ai.tool.call.arguments"
TOOL_RESULT = "gen_ai.tool.call.result"
TOOL_SUCCESS = "agentbolt.tool.success"  # bool: the AIR signal for tool-call status

# Worker identity on the resource.
WORKER_ID = "agentbolt.worker_id"
