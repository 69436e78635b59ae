"""``@agentbolt.rollout``: marks a function as an agent a worker can run.

The function takes ``(task, llm)`` — the rollout's input and an :class:`~agentbolt.types.LLM` — and
returns a reward (a number), or None when it reports rewards with ``emit_reward``. It may be sync or
async.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from agentbolt.types import LLM

AgentResult = float | int | bool | None
AgentFunction = Callable[[Any, LLM], AgentResult | Awaitable[AgentResult]]


@dataclass(frozen=True)
class RolloutFunction:
    """An agent function marked with ``@agentbolt.rollout``."""

    fn: AgentFunction
    name: str
    is_async: bool

    def __call__(self, task: Any, llm: LLM) -> Any:
        return self.fn(task, llm)


def rollout(fn: AgentFunction) -> RolloutFunction:
    """Mark ``fn(task, llm) -> reward | None`` as an agent function."""
    if isinstance(fn, RolloutFunction):
        return fn
    params = [
        p
        for p in inspect.signature(fn).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    ]
    if len(params) != 2:
        raise TypeError(
            f"@agentbolt.rollout needs a function of (task, llm); {fn.__qualname__} takes "
            f"{len(params)} required positional argument(s)"
        )
    return RolloutFunction(fn=fn, name=fn.__qualname__, is_async=inspect.iscoroutinefunction(fn))
