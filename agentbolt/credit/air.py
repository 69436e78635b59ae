"""AIR (Automatic Intermediate Rewarding): runtime signals -> intermediate rewards, no user code.

Each built-in signal adds its ``AIRConfig`` weight (0 disables it) to one transition:

* ``tool_failure`` -- per tool call that failed or raised, to the LLM call that asked for it;
* ``tool_success`` -- per tool call that succeeded, to the LLM call that asked for it (off by default);
* ``malformed_tool_call`` -- to a call whose tool call the gateway could not parse;
* ``exception`` -- per exception the agent recorded after a call, and to the last call of an attempt
  that an uncaught exception ended;
* ``truncation`` -- to a call whose response hit the token limit (finish reason ``length``);
* ``timeout`` -- to the last call of an attempt that timed out (its final reward is then
  ``CreditConfig.timeout_reward``, see :mod:`agentbolt.credit.credit`).

User rules are plain functions ``(transition, episode) -> float``, passed to :func:`air_rewards` (and
to ``prepare_batch(..., air_rules=...)``); they live in code, not in the YAML config. A rule can read
the client spans placed after the call with ``episode.spans_following(transition)``. Its reward is
reported under ``rule:<function name>``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from agentbolt.errors import BadInput
from agentbolt.types import AIRConfig, Episode, Transition

AIRRule = Callable[[Transition, Episode], float]


def air_rewards(episode: Episode, config: AIRConfig, rules: Sequence[AIRRule] = ()) -> list[dict[str, float]]:
    """AIR rewards of each transition of ``episode``, as ``{signal: reward}`` (non-zero entries only).

    Raises:
        BadInput: a user rule returned something that is not a finite number.
    """
    out: list[dict[str, float]] = [{} for _ in episode.transitions]
    if not config.enabled:
        return out
    last = len(episode.transitions) - 1
    for t, transition in enumerate(episode.transitions):
        signals = {
            "tool_failure": config.tool_failure * sum(1 for o in transition.tool_outcomes if not o.success),
            "tool_success": config.tool_success * sum(1 for o in transition.tool_outcomes if o.success),
            "malformed_tool_call": config.malformed_tool_call * transition.tool_call_malformed,
            "exception": config.exception
            * (len(transition.exceptions) + (t == last and episode.uncaught_exception is not None)),
            "truncation": config.truncation * transition.truncated,
            "timeout": config.timeout * (t == last and episode.timed_out),
        }
        for rule in rules:
            name = f"rule:{getattr(rule, '__name__', type(rule).__name__)}"
            value = rule(transition, episode)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise BadInput(f"AIR rule {name[5:]} returned {value!r}; a rule must return a finite number")
            signals[name] = signals.get(name, 0.0) + float(value)
        out[t] = {k: float(v) for k, v in signals.items() if v != 0}
    return out
