"""Advantage estimators over rollouts: GRPO, RLOO and REINFORCE++, with one vote per rollout.

Input per rollout i: its episode return G_i (one number, see :mod:`agentbolt.credit.credit`) and its
per-transition returns R_{i,t}. Baselines and scales come from the episode returns only, so a rollout
that made ten calls counts once, like a rollout that made one; each transition's advantage is then
its own return measured against that rollout-level baseline:

* ``grpo``: group g = the rollouts sharing a ``group_id`` (same task);
  A_{i,t} = (R_{i,t} - mean_g(G)) / (std_g(G) + eps), or without the division when
  ``normalize_std`` is False (Dr. GRPO). std is the sample standard deviation (n - 1).
* ``rloo``: A_{i,t} = R_{i,t} - mean of G_j over the *other* rollouts j of the group (never scaled).
* ``reinforce_pp``: no groups; A_{i,t} = (R_{i,t} - mean(G)) / (std(G) + eps) over the whole batch.

With ``broadcast`` credit R_{i,t} = G_i, so every transition of a rollout shares one advantage and
these are the textbook estimators. A group (for reinforce_pp: the batch) with fewer than two rollouts,
or whose episode returns are all equal (spread under 1e-9), carries no signal: it is skipped and
counted, and its rollouts give no samples. Rollouts without a ``group_id`` each form their own group.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from agentbolt.types import AdvantageConfig

EQUAL_SPREAD = 1e-9  # episode returns closer than this count as equal


@dataclass(frozen=True)
class RolloutReturns:
    """What an estimator needs of one rollout."""

    rollout_id: str
    group_id: str | None
    episode_return: float  # G_i
    returns: list[float]  # R_{i,t}, one per transition (may be empty: the rollout still counts in its group)


@dataclass
class Advantages:
    """Per-transition advantages of each rollout that was not skipped, and group counts."""

    by_rollout: dict[str, list[float]] = field(default_factory=dict)
    groups_total: int = 0
    groups_skipped: int = 0
    skipped_rollouts: set[str] = field(default_factory=set)


def compute_advantages(rollouts: Sequence[RolloutReturns], config: AdvantageConfig) -> Advantages:
    """Advantages by the configured estimator (see the module doc)."""
    if config.estimator not in ("grpo", "rloo", "reinforce_pp"):
        raise ValueError(f"unknown advantage estimator {config.estimator!r}: use grpo, rloo or reinforce_pp")
    groups: dict[str, list[RolloutReturns]] = {}
    if config.estimator == "reinforce_pp":
        groups["batch"] = list(rollouts)
    else:
        for r in rollouts:
            groups.setdefault(r.group_id if r.group_id is not None else f"rollout:{r.rollout_id}", []).append(r)
    out = Advantages(groups_total=len(groups))
    for members in groups.values():
        returns = [m.episode_return for m in members]
        if len(members) < 2 or max(returns) - min(returns) <= EQUAL_SPREAD:
            out.groups_skipped += 1
            out.skipped_rollouts.update(m.rollout_id for m in members)
            continue
        if config.estimator == "rloo":
            total = sum(returns)
            for m in members:
                baseline = (total - m.episode_return) / (len(members) - 1)
                out.by_rollout[m.rollout_id] = [r - baseline for r in m.returns]
            continue
        mean = statistics.fmean(returns)
        scale = statistics.stdev(returns) + config.eps if config.normalize_std else 1.0
        for m in members:
            out.by_rollout[m.rollout_id] = [(r - mean) / scale for r in m.returns]
    return out
