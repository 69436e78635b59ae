"""One-digit addition in one model call: the task TRL's GRPO quick-start-sized runs are compared on.

The user message is ``What is {a} + {b}? Reply with only the number.``, sent as the only message, so the
model's chat template adds its own default system prompt (SmolLM2: "You are a helpful AI assistant named
SmolLM, trained by Hugging Face"). Sampling as TRL's GRPOTrainer does by default: temperature 1, no top-k or
top-p truncation, at most 24 new tokens.

Reward: 1.0 iff the last integer in the reply equals ``a + b``, else 0.0.
"""

from __future__ import annotations

import re
from typing import Any

import agentbolt
from agentbolt.integrations import openai_client

MAX_TOKENS = 24
PROMPT = "What is {a} + {b}? Reply with only the number."

_INTEGER = re.compile(r"-?\d+")


def reward_of(text: str | None, answer: int) -> float:
    """1.0 when the last integer in ``text`` is ``answer``, else 0.0 (no integer, or no text, scores 0)."""
    found = _INTEGER.findall(text or "")
    return 1.0 if found and int(found[-1]) == answer else 0.0


@agentbolt.rollout
def solve(task: dict[str, Any], llm: agentbolt.LLM) -> float:
    """Ask the policy model ``task``'s sum (``a``, ``b``); reward 1 if the reply ends on the right number."""
    client = openai_client.client(llm, max_retries=1)  # openai.OpenAI over the process's shared pool
    with agentbolt.agent("adder"):
        response = client.chat.completions.create(
            model=llm.model,
            messages=[{"role": "user", "content": PROMPT.format(a=task["a"], b=task["b"])}],
            max_tokens=MAX_TOKENS,
            temperature=1.0,
        )
    return reward_of(response.choices[0].message.content, int(task["a"]) + int(task["b"]))
