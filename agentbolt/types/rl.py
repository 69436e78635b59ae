"""Training data and the RL stages' settings: from spans to samples (adapter, credit, AIR, advantages, loss)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from agentbolt.types.base import _Model
from agentbolt.types.queue import AttemptStatus
from agentbolt.types.spans import Span

# Training data (agentbolt/adapter, agentbolt/credit, agentbolt/trainer): from spans to samples.
# adapter: a finished rollout's spans -> Episode (its Transitions); credit + AIR: Episode -> one
# return per transition; advantages: returns -> one advantage per transition; batch: -> Samples.


class RewardRecord(_Model):
    """One ``agentbolt.reward`` span, as recorded; the credit stage reduces it to a scalar."""

    value: float | None = Field(default=None, description="The primary scalar (agentbolt.reward.value), if given.")
    dimensions: dict[str, float] = Field(default_factory=dict, description="Named reward dimensions, if given.")
    primary: str | None = Field(default=None, description="Which dimension is the primary one.")
    final: bool = Field(default=True, description="The episode's final reward (True) or an intermediate one.")
    sequence_id: int = Field(default=0, description="Position of the reward span in its attempt.")


class ToolOutcome(_Model):
    """A tool call the agent ran after an LLM call: the raw material of AIR's tool-failure signal."""

    name: str | None = Field(default=None, description="gen_ai.tool.name.")
    call_id: str | None = Field(default=None, description="gen_ai.tool.call.id, if the agent recorded it.")
    success: bool = Field(
        default=True, description="agentbolt.tool.success; else False when the span's status is ERROR."
    )
    error: str | None = Field(default=None, description="The span's status message when it failed.")
    matched_by: Literal["call_id", "order"] = Field(
        default="order", description="call_id: the LLM call's tool_calls named this id; order: the span followed it."
    )


class Transition(_Model):
    """One policy-model call of an episode (one choice of one gateway LLM-call span) and the signals after it."""

    rollout_id: str
    attempt_id: str
    index: int = Field(description="Position among the episode's kept transitions (0-based, by sequence id).")
    span_id: str = Field(description="The gateway's LLM-call span.")
    sequence_id: int = Field(description="The LLM-call span's sequence id in its attempt.")
    prompt_token_ids: list[int] = Field(description="Exactly what the engine was fed.")
    response_token_ids: list[int] = Field(description="Exactly what it sampled.")
    logprobs: list[float] = Field(description="Behaviour log-probability of each response token.")
    temperature: float = Field(
        default=1.0,
        gt=0,
        description="Temperature the logprobs are taken at: log_softmax(logits / temperature); "
        "a greedy call (temperature 0) has logprobs at temperature 1.",
    )
    model: str | None = Field(default=None, description="Model name the call asked for (or got).")
    model_version: int | None = Field(default=None, description="Weights version that produced the response.")
    agent_name: str | None = Field(default=None, description="The agent that made the call, if known.")
    agent_source: Literal["header", "parent", "time"] | None = Field(
        default=None, description="Which rule found agent_name (see agentbolt.adapter)."
    )
    finish_reason: str | None = Field(default=None, description="stop, length or tool_calls.")
    token_source: str = Field(default="engine", description="engine, or retokenized (ids rebuilt from text).")
    tool_calls_requested: int = Field(default=0, description="Tool calls the response asked for.")
    tool_outcomes: list[ToolOutcome] = Field(default_factory=list, description="Tool calls run because of it.")
    tool_call_malformed: bool = Field(default=False, description="The gateway could not parse its tool call.")
    exceptions: list[str] = Field(
        default_factory=list, description="Types of exceptions the agent recorded after it, before the next call."
    )
    rewards: list[RewardRecord] = Field(
        default_factory=list, description="Intermediate rewards (final=False) that followed it."
    )
    signal_span_ids: list[str] = Field(
        default_factory=list, description="Client spans placed after this call, before the next one (for AIR rules)."
    )

    @property
    def truncated(self) -> bool:
        """The response was cut off by the token limit."""
        return self.finish_reason == "length"


class Episode(_Model):
    """The transitions of one rollout's last attempt, with what credit assignment needs."""

    rollout_id: str
    attempt_id: str
    group_id: str | None = None
    attempt_status: AttemptStatus | None = Field(default=None, description="None when the attempts were not given.")
    transitions: list[Transition] = Field(default_factory=list)
    final_reward: RewardRecord | None = Field(default=None, description="The attempt's last final reward span.")
    rollout_reward: float | None = Field(default=None, description="Rollout.reward, the fallback final reward.")
    uncaught_exception: str | None = Field(default=None, description="Type of the exception that ended the attempt.")
    spans: list[Span] = Field(default_factory=list, description="The attempt's spans by sequence id (for AIR rules).")

    @property
    def timed_out(self) -> bool:
        return self.attempt_status is AttemptStatus.TIMEOUT

    def spans_following(self, transition: Transition) -> list[Span]:
        """The client spans (tools, rewards, exceptions...) the adapter placed after ``transition``."""
        wanted = set(transition.signal_span_ids)
        return [s for s in self.spans if s.span_id in wanted]


class Sample(_Model):
    """One transition ready for the policy loss: tokens, behaviour logprobs and its advantage."""

    rollout_id: str
    attempt_id: str
    group_id: str | None = None
    agent_name: str | None = None
    transition_index: int = Field(description="Transition.index within its episode.")
    prompt_token_ids: list[int]
    response_token_ids: list[int]
    old_logprobs: list[float] = Field(description="Behaviour logprobs from the gateway, one per response token.")
    temperature: float = Field(
        default=1.0, gt=0, description="The trainer scores tokens at this temperature, as the engine sampled them."
    )
    advantage: float
    return_value: float = Field(description="The transition's return from credit assignment (before baselines).")
    model_version: int | None = None


class BatchReport(_Model):
    """What prepare_batch kept, dropped (by reason) and computed; ``metrics()`` flattens it for logging."""

    rollouts_total: int = 0
    rollouts_used: int = Field(default=0, description="Rollouts that gave at least one sample.")
    rollouts_dropped: dict[str, int] = Field(default_factory=dict, description="Rollouts without samples, by reason.")
    earlier_attempts_dropped: int = Field(default=0, description="Attempts before each rollout's last one.")
    earlier_attempt_spans_dropped: int = 0
    transitions_dropped: dict[str, int] = Field(
        default_factory=dict, description="LLM calls not trained on, by reason."
    )
    transitions_retokenized: int = Field(default=0, description="Kept transitions whose ids came from re-tokenizing.")
    rewards_unattributed: int = Field(default=0, description="Intermediate rewards before the first kept transition.")
    rewards_invalid: int = Field(default=0, description="Reward spans without a usable number (ignored).")
    groups_total: int = 0
    groups_skipped: int = Field(default=0, description="Groups whose episode returns were all equal (no signal).")
    reward_mean: float | None = Field(default=None, description="Mean final reward over rollouts that had one.")
    reward_std: float | None = None
    return_mean: float | None = Field(default=None, description="Mean episode return (final + intermediate + AIR).")
    return_std: float | None = None
    advantage_mean: float | None = Field(default=None, description="Mean advantage over samples.")
    advantage_abs_mean: float | None = None
    agents: dict[str, int] = Field(default_factory=dict, description="Kept transitions per agent ('' = unknown).")
    agent_sources: dict[str, int] = Field(default_factory=dict, description="How agent names were found.")
    air: dict[str, float] = Field(default_factory=dict, description="Sum of AIR rewards, per signal.")
    air_counts: dict[str, int] = Field(default_factory=dict, description="Transitions that got each AIR signal.")
    tool_use: dict[str, float] = Field(
        default_factory=dict,
        description="Over the episodes built: tools/use_rate (share with a well-formed tool call), "
        "tools/malformed_rate (share with a malformed one), calls/per_rollout (policy calls per episode).",
    )
    samples: int = Field(default=0, description="Kept transitions: one sample each.")
    prompt_tokens: int = 0
    response_tokens: int = 0

    def metrics(self) -> dict[str, float]:
        """Flat ``{name: number}`` for console/JSONL/TensorBoard; absent statistics are left out."""
        out: dict[str, float] = {
            "rollouts/total": self.rollouts_total,
            "rollouts/used": self.rollouts_used,
            "rollouts/earlier_attempts_dropped": self.earlier_attempts_dropped,
            "transitions/kept": self.samples,  # every kept transition is one sample
            "transitions/dropped": sum(self.transitions_dropped.values()),
            "transitions/retokenized": self.transitions_retokenized,
            "rewards/unattributed": self.rewards_unattributed,
            "rewards/invalid": self.rewards_invalid,
            "groups/total": self.groups_total,
            "groups/skipped": self.groups_skipped,
            "groups/skipped_frac": self.groups_skipped / self.groups_total if self.groups_total else 0.0,
            "samples": self.samples,
            "tokens/prompt": self.prompt_tokens,
            "tokens/response": self.response_tokens,
        }
        out.update({f"rollouts/dropped/{k}": v for k, v in self.rollouts_dropped.items()})
        out.update({f"transitions/dropped/{k}": v for k, v in self.transitions_dropped.items()})
        out.update({f"agents/{k or 'unknown'}": v for k, v in self.agents.items()})
        out.update({f"air/{k}": v for k, v in self.air.items()})
        out.update({f"air_count/{k}": v for k, v in self.air_counts.items()})
        out.update(self.tool_use)
        stats = {
            "reward/mean": self.reward_mean,
            "reward/std": self.reward_std,
            "return/mean": self.return_mean,
            "return/std": self.return_std,
            "advantage/mean": self.advantage_mean,
            "advantage/abs_mean": self.advantage_abs_mean,
        }
        out.update({k: v for k, v in stats.items() if v is not None})
        return {k: float(v) for k, v in out.items()}


class AdapterConfig(_Model):
    """Which LLM calls become transitions (agentbolt.adapter)."""

    agents: list[str] | None = Field(
        default=None,
        description="Train only the calls of these agents: names or fnmatch patterns ('planner', 'coder-*'). "
        "None: every call, including calls with no known agent.",
    )
    models: list[str] | None = Field(
        default=None,
        description="Keep only calls whose requested or served model matches one of these names/fnmatch patterns; "
        "None: every gateway call.",
    )
    max_prompt_tokens: int | None = Field(
        default=None, ge=1, description="Drop calls whose prompt is longer (not truncated); None: no limit."
    )
    max_response_tokens: int | None = Field(
        default=None, ge=1, description="Drop calls whose response is longer (not truncated); None: no limit."
    )
    drop_retokenized: bool = Field(
        default=False, description="Drop calls whose token ids were rebuilt from text, not taken from the engine."
    )
    signal_order: Literal["sequence", "clock"] = Field(
        default="clock",
        description="How client spans (tools, rewards, exceptions) are placed between LLM calls: clock: by start "
        "time vs each call's end time (right when the gateway and the workers share a clock, as in agentbolt "
        "train); sequence: by the store's sequence ids (arrival order: wrong when the worker's batched span "
        "export lands after the next LLM call). Tool calls with a tool call id are matched by id either way.",
    )


class CreditConfig(_Model):
    """How an episode's rewards become one return per transition (LightningRL, agentbolt.credit)."""

    strategy: Literal["broadcast", "broadcast_own", "discounted", "final_only"] = Field(
        default="broadcast",
        description="broadcast: every transition gets the episode return (final + all intermediate rewards); "
        "broadcast_own: every transition gets the final reward plus its own intermediate rewards (a failed tool "
        "call gets less than the calls around it); "
        "discounted: R_t = sum_{k>=t} gamma^(k-t) r_k + gamma^(T-1-t) final; final_only: each transition its own "
        "intermediate rewards, the last one also the final reward.",
    )
    gamma: float = Field(default=1.0, ge=0.0, le=1.0, description="Discount per transition (discounted only).")
    reward_weights: dict[str, float] | None = Field(
        default=None,
        description="Reduce multi-dimensional rewards to sum(weight * dimension) (missing dimensions count 0); "
        "None: use each reward's primary value. A reward without dimensions is its value either way.",
    )
    missing_reward: float | None = Field(
        default=None,
        description="Final reward of a rollout that reported none (no final reward span, no Rollout.reward); "
        "None: such rollouts are dropped and counted as no_reward.",
    )
    timeout_reward: float | None = Field(
        default=0.0,
        description="Final reward of an attempt that timed out without reporting one (so AIR's timeout penalty can "
        "act); None: handled like any missing reward.",
    )


class AIRConfig(_Model):
    """Automatic Intermediate Rewarding: reward added to a transition per runtime signal (0 disables one).

    Defaults are small against final rewards in [0, 1]: they steer credit between calls without
    swamping the task's outcome.
    """

    enabled: bool = Field(default=True, description="False: no AIR rewards at all (user rules included).")
    tool_failure: float = Field(
        default=-0.1, description="Per failed or raising tool call, to the LLM call that requested it."
    )
    tool_success: float = Field(
        default=0.0, description="Per successful tool call, to the LLM call that requested it (0: off)."
    )
    malformed_tool_call: float = Field(
        default=-0.1, description="To a call whose tool call the gateway could not parse."
    )
    exception: float = Field(
        default=-0.1,
        description="Per exception the agent recorded after a call (emit_exception), and to the last call of an "
        "attempt ended by an uncaught exception.",
    )
    truncation: float = Field(default=-0.1, description="To a call whose response hit the token limit.")
    timeout: float = Field(default=-0.2, description="To the last call of an attempt that timed out.")


class AdvantageConfig(_Model):
    """How returns become advantages (agentbolt.trainer.advantages), always with one vote per rollout."""

    estimator: Literal["grpo", "rloo", "reinforce_pp"] = Field(
        default="grpo",
        description="grpo: (R - group mean) / group std; rloo: R - mean of the other rollouts of the group; "
        "reinforce_pp: (R - batch mean) / batch std, no groups.",
    )
    normalize_std: bool = Field(
        default=True, description="Divide by the std of episode returns (grpo, reinforce_pp); rloo never does."
    )
    eps: float = Field(default=1e-6, gt=0, description="Added to the std before dividing.")


class LossConfig(_Model):
    """The token-level PPO-clip objective (agentbolt.trainer.loss)."""

    clip_low: float = Field(default=0.2, ge=0.0, lt=1.0, description="The ratio is clipped below at 1 - clip_low.")
    clip_high: float = Field(
        default=0.2, ge=0.0, description="The ratio is clipped above at 1 + clip_high (DAPO uses 0.28)."
    )
    kl_coef: float = Field(default=0.0, ge=0.0, description="Weight of the k3 KL penalty to the reference model.")
    aggregation: Literal["token_mean", "seq_mean", "rollout_mean"] = Field(
        default="rollout_mean",
        description="How token losses are weighted: token_mean: every token alike; seq_mean: every transition "
        "alike; rollout_mean: every rollout alike, whatever its number of calls and tokens.",
    )


class RLConfig(_Model):
    """Everything between stored spans and the policy loss."""

    adapter: AdapterConfig = Field(default_factory=AdapterConfig)
    credit: CreditConfig = Field(default_factory=CreditConfig)
    air: AIRConfig = Field(default_factory=AIRConfig)
    advantage: AdvantageConfig = Field(default_factory=AdvantageConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
