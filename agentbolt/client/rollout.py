"""``@agentbolt.rollout``: marks a function as an agent a worker can run.

The function takes ``(task, llm)`` — the rollout's input and an :class:`~agentbolt.types.LLM` — and
returns a reward (a number), or None when it reports rewards with ``emit_reward``. It may be sync or
async.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from agentbolt.errors import BadInput
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


def load_function(spec: str, what: str) -> Any:
    """Import ``MODULE:NAME`` (the current directory is put on the import path); ``what`` names it in errors.

    Raises:
        BadInput: the spec is malformed, the module cannot be imported, or it has no such name.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise BadInput(f"{what} {spec!r} should be MODULE:NAME, e.g. examples.calculator.agent:solve")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BadInput(f"cannot import {module_name!r} for the {what}: {exc}") from exc
    try:
        return getattr(module, attr)
    except AttributeError:
        raise BadInput(f"module {module_name!r} has no {attr!r} (the {what})") from None
