"""LightningRL credit assignment: an episode's rewards -> one return per transition.

Rewards of an episode: one *final* reward (the task's outcome) and *intermediate* rewards r_t, each
credited to a transition t: the user's ``emit_reward(final=False)`` that followed it plus AIR's
rewards for it (:mod:`agentbolt.credit.air`). With T transitions and final reward F:

* ``broadcast`` (the paper's default): R_t = F + sum_k r_k for every t -- the episode return, to each call.
* ``broadcast_own``: R_t = F + r_t -- the outcome to every call, and each call's own intermediate rewards
  (AIR's included) to it alone: a call whose tool failed gets less than the calls that worked.
* ``discounted``: R_t = sum_{k>=t} gamma^(k-t) r_k + gamma^(T-1-t) F -- the final reward is the last
  transition's reward, so earlier calls get less of it when gamma < 1, and rewards only reach the
  calls at or before them.
* ``final_only``: R_t = r_t, and R_{T-1} = r_{T-1} + F -- no propagation at all.

The *episode return* G = F + sum_k r_k (undiscounted, whatever the strategy) is what advantages
compare between rollouts: one number per rollout, so a rollout's number of calls does not change its
weight in a baseline.

Multi-dimensional rewards reduce to a scalar by :func:`reward_value`: with
``CreditConfig.reward_weights`` the weighted sum of the dimensions, else the primary value.

The final reward F, first that applies: the attempt's last final reward span; ``Rollout.reward``
(e.g. the agent's return value when spans were lost); ``CreditConfig.timeout_reward`` when the
attempt timed out; ``CreditConfig.missing_reward``; else the rollout is dropped (``no_reward``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from agentbolt.types import CreditConfig, Episode, RewardRecord


@dataclass(frozen=True)
class EpisodeCredit:
    """Credit of one episode: its final reward, per-transition intermediate rewards and returns."""

    final: float
    intermediate: list[float]  # r_t, one per transition (user rewards + AIR)
    returns: list[float]  # R_t, one per transition
    episode_return: float  # G = final + sum(intermediate)


def reward_value(reward: RewardRecord, weights: Mapping[str, float] | None = None) -> float:
    """The scalar a reward stands for: weighted sum of its dimensions when weights are given and it
    has dimensions, else its value, else its primary (or only) dimension."""
    if weights is not None and reward.dimensions:
        return sum(w * reward.dimensions.get(name, 0.0) for name, w in weights.items())
    if reward.value is not None:
        return reward.value
    name = reward.primary if reward.primary in reward.dimensions else next(iter(sorted(reward.dimensions)))
    return reward.dimensions[name]


def final_reward(episode: Episode, config: CreditConfig) -> float | None:
    """The episode's final reward by the rule in the module doc; None when the rollout has none."""
    if episode.final_reward is not None:
        return reward_value(episode.final_reward, config.reward_weights)
    if episode.rollout_reward is not None:
        return episode.rollout_reward
    if episode.timed_out and config.timeout_reward is not None:
        return config.timeout_reward
    return config.missing_reward


def transition_returns(final: float, intermediate: Sequence[float], strategy: str, gamma: float = 1.0) -> list[float]:
    """Returns R_t of T transitions from the final reward and the intermediate rewards r_t (length T)."""
    n = len(intermediate)
    if strategy == "broadcast":
        return [final + sum(intermediate)] * n
    if strategy == "broadcast_own":
        return [final + r for r in intermediate]
    if strategy == "final_only":
        return [r + (final if t == n - 1 else 0.0) for t, r in enumerate(intermediate)]
    if strategy == "discounted":
        returns = [0.0] * n
        running = final  # F is the last transition's reward: R_{T-1} = r_{T-1} + F
        for t in reversed(range(n)):
            running = intermediate[t] + (running if t == n - 1 else gamma * running)
            returns[t] = running
        return returns
    raise ValueError(f"unknown credit strategy {strategy!r}: use broadcast, broadcast_own, discounted or final_only")


def assign_credit(episode: Episode, config: CreditConfig, air: Sequence[float] | None = None) -> EpisodeCredit | None:
    """Credit for each transition of ``episode``; None when it has no final reward (the rollout is dropped).

    Args:
        episode: from :func:`agentbolt.adapter.build_episode`.
        config: strategy, gamma, reward weights, missing/timeout rules.
        air: AIR reward per transition (same length as the transitions), added to the user's
            intermediate rewards.
    """
    final = final_reward(episode, config)
    if final is None:
        return None
    if air is not None and len(air) != len(episode.transitions):
        raise ValueError(f"got {len(air)} AIR rewards for {len(episode.transitions)} transitions")
    intermediate = [
        sum(reward_value(r, config.reward_weights) for r in t.rewards) + (air[i] if air is not None else 0.0)
        for i, t in enumerate(episode.transitions)
    ]
    returns = transition_returns(final, intermediate, config.strategy, config.gamma)
    return EpisodeCredit(final, intermediate, returns, final + sum(intermediate))
