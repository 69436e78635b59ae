"""A tiny agent for the end-to-end training test: one chat call, a reward that varies with the reply.

A tiny random model answers gibberish, so no task reward would ever vary; this reward (the share of
vowels among the reply's characters) differs between sampled replies, which is all GRPO needs
to make an update.
"""

from __future__ import annotations

from typing import Any

import openai

import agentbolt


@agentbolt.rollout
def solve(task: dict[str, Any], llm: agentbolt.LLM) -> float:
    client = openai.OpenAI(base_url=llm.base_url, api_key=llm.api_key, max_retries=0)
    with agentbolt.agent("e2e-agent"):
        reply = client.chat.completions.create(
            model=llm.model,
            messages=[{"role": "user", "content": str(task["question"])}],
            max_tokens=12,
            temperature=1.0,
        )
    text = reply.choices[0].message.content or ""
    return sum(c in "aeiouAEIOU" for c in text) / (len(text) + 1)
