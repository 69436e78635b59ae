"""Credit assignment: LightningRL strategies (credit.py) and AIR's automatic intermediate rewards (air.py)."""

from agentbolt.credit.air import AIRRule, air_rewards
from agentbolt.credit.credit import EpisodeCredit, assign_credit, final_reward, reward_value, transition_returns

__all__ = [
    "AIRRule",
    "EpisodeCredit",
    "air_rewards",
    "assign_credit",
    "final_reward",
    "reward_value",
    "transition_returns",
]
