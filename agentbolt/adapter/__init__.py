"""Adapter: a finished rollout's spans -> an episode of transitions (the policy model's calls).

The rules (which attempt, which calls, agent names, ordering, drops) are in :mod:`agentbolt.adapter.episode`.
"""

from agentbolt.adapter.episode import AdapterResult, build_episode

__all__ = ["AdapterResult", "build_episode"]
