"""Finished rollouts and their spans -> training samples: adapter -> AIR -> credit -> advantages.

Every gateway LLM call of each rollout's last attempt either becomes a :class:`~agentbolt.types.Sample`
or is counted in ``BatchReport.transitions_dropped`` under a reason: the adapter's reasons (see
:mod:`agentbolt.adapter.episode`), ``no_reward`` (its rollout had no final reward) or ``equal_group``
(its group's returns were all equal). Rollouts without samples are counted the same way in
``BatchReport.rollouts_dropped`` (``not_finished``, ``cancelled``, ``no_spans``, ``no_reward``,
``no_transitions``, ``equal_group``). A rollout with a reward but no kept transitions still counts in
its group's baseline: its outcome says how hard the task is.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Mapping, Sequence

from agentbolt.adapter import build_episode
from agentbolt.credit import AIRRule, EpisodeCredit, air_rewards, assign_credit
from agentbolt.trainer.advantages import RolloutReturns, compute_advantages
from agentbolt.types import BatchReport, Episode, RLConfig, Rollout, Sample, Span


def prepare_batch(
    rollouts: Sequence[Rollout],
    spans: Mapping[str, Sequence[Span]],
    config: RLConfig,
    *,
    air_rules: Sequence[AIRRule] = (),
) -> tuple[list[Sample], BatchReport]:
    """Build the samples of one policy update from finished rollouts.

    Args:
        rollouts: finished rollouts, ideally queried with ``with_attempts=True`` (see the adapter for
            what is guessed without them).
        spans: every stored span of each rollout (all attempts), by rollout id; a rollout missing
            here has no spans.
        config: adapter, AIR, credit and advantage settings.
        air_rules: user AIR rules ``(transition, episode) -> float`` (see :mod:`agentbolt.credit.air`).

    Returns:
        The samples (rollouts in input order, transitions in episode order) and the report of what was
        kept, dropped and computed. Bad or missing data never raises; a user AIR rule that returns a
        non-number raises :class:`~agentbolt.errors.BadInput`.
    """
    report = BatchReport(rollouts_total=len(rollouts))
    rollouts_dropped: Counter[str] = Counter()
    transitions_dropped: Counter[str] = Counter()
    credited: list[tuple[Episode, EpisodeCredit]] = []
    episodes: list[Episode] = []
    for rollout in rollouts:
        built = build_episode(rollout, spans.get(rollout.rollout_id, ()), config.adapter)
        report.earlier_attempts_dropped += built.earlier_attempts
        report.earlier_attempt_spans_dropped += built.earlier_attempt_spans
        report.rewards_unattributed += built.rewards_unattributed
        report.rewards_invalid += built.rewards_invalid
        transitions_dropped.update(built.transitions_dropped)
        episode = built.episode
        if episode is None:
            rollouts_dropped[built.dropped or "unknown"] += 1
            continue
        episodes.append(episode)
        air = air_rewards(episode, config.air, air_rules)
        credit = assign_credit(episode, config.credit, [sum(a.values()) for a in air])
        if credit is None:
            rollouts_dropped["no_reward"] += 1
            transitions_dropped["no_reward"] += len(episode.transitions)
            continue
        for signals in air:
            for name, value in signals.items():
                report.air[name] = report.air.get(name, 0.0) + value
                report.air_counts[name] = report.air_counts.get(name, 0) + 1
        credited.append((episode, credit))

    advantages = compute_advantages(
        [RolloutReturns(e.rollout_id, e.group_id, c.episode_return, c.returns) for e, c in credited],
        config.advantage,
    )
    report.groups_total, report.groups_skipped = advantages.groups_total, advantages.groups_skipped
    samples: list[Sample] = []
    for episode, credit in credited:
        if not episode.transitions:
            rollouts_dropped["no_transitions"] += 1
            continue
        if episode.rollout_id in advantages.skipped_rollouts:
            rollouts_dropped["equal_group"] += 1
            transitions_dropped["equal_group"] += len(episode.transitions)
            continue
        report.rollouts_used += 1
        for transition, ret, adv in zip(
            episode.transitions, credit.returns, advantages.by_rollout[episode.rollout_id], strict=True
        ):
            samples.append(
                Sample(
                    rollout_id=episode.rollout_id,
                    attempt_id=episode.attempt_id,
                    group_id=episode.group_id,
                    agent_name=transition.agent_name,
                    transition_index=transition.index,
                    prompt_token_ids=transition.prompt_token_ids,
                    response_token_ids=transition.response_token_ids,
                    old_logprobs=transition.logprobs,
                    temperature=transition.temperature,
                    advantage=adv,
                    return_value=ret,
                    model_version=transition.model_version,
                )
            )
            agent = transition.agent_name or ""
            report.agents[agent] = report.agents.get(agent, 0) + 1
            source = transition.agent_source or "none"
            report.agent_sources[source] = report.agent_sources.get(source, 0) + 1
            report.transitions_retokenized += transition.token_source != "engine"

    report.tool_use = tool_use_rates(episodes)
    report.rollouts_dropped = dict(rollouts_dropped)
    report.transitions_dropped = dict(transitions_dropped)
    report.samples = len(samples)
    report.prompt_tokens = sum(len(s.prompt_token_ids) for s in samples)
    report.response_tokens = sum(len(s.response_token_ids) for s in samples)
    finals = [c.final for _, c in credited]
    returns = [c.episode_return for _, c in credited]
    if finals:
        report.reward_mean, report.reward_std = statistics.fmean(finals), statistics.pstdev(finals)
        report.return_mean, report.return_std = statistics.fmean(returns), statistics.pstdev(returns)
    if samples:
        report.advantage_mean = statistics.fmean(s.advantage for s in samples)
        report.advantage_abs_mean = statistics.fmean(abs(s.advantage) for s in samples)
    return samples, report


def tool_use_rates(episodes: Sequence[Episode]) -> dict[str, float]:
    """How the episodes' policy calls used tools: what an agent that learns to act changes.

    ``tools/use_rate``: share of episodes with at least one well-formed tool call (parsed by the gateway);
    ``tools/malformed_rate``: share with at least one malformed call; ``calls/per_rollout``: mean policy calls
    per episode. Empty when there are no episodes.
    """
    if not episodes:
        return {}
    used = sum(any(t.tool_calls_requested and not t.tool_call_malformed for t in e.transitions) for e in episodes)
    malformed = sum(any(t.tool_call_malformed for t in e.transitions) for e in episodes)
    calls = sum(len(e.transitions) for e in episodes)
    n = len(episodes)
    return {"tools/use_rate": used / n, "tools/malformed_rate": malformed / n, "calls/per_rollout": calls / n}
