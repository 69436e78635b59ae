"""The Lightning Client: runs the user's agent in its own runtime and reports to the server."""

from agentbolt.client.http import ServerClient
from agentbolt.client.rollout import RolloutFunction, rollout
from agentbolt.client.worker import Worker, WorkerStats

__all__ = ["RolloutFunction", "ServerClient", "Worker", "WorkerStats", "rollout"]
