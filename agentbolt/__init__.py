"""agentbolt: train the LLM inside any AI agent with reinforcement learning, from its traces."""

__version__ = "0.1.0"

from agentbolt.client.emit import (
    agent,
    emit_annotation,
    emit_exception,
    emit_message,
    emit_reward,
    tool_call,
)
from agentbolt.client.rollout import rollout
from agentbolt.client.worker import Worker
from agentbolt.types import LLM

__all__ = [
    "LLM",
    "Worker",
    "__version__",
    "agent",
    "emit_annotation",
    "emit_exception",
    "emit_message",
    "emit_reward",
    "rollout",
    "tool_call",
]
