"""How often does the demo model solve the demo's held-out problems without its calculator?

Asks SmolLM2-135M-Instruct (the embedded engine, no gateway) each of the 64 held-out problems of
`examples/calculator/train.yaml` with the agent's own system prompt and no tool offered, sampled at T=1 and
greedily, and scores the replies with the agent's reward. This is the floor the tool task is built on: a
reward must come through the calculator. Prints the counts and writes benchmarks/results/no_tool_accuracy.json.

    python benchmarks/no_tool_accuracy.py
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

from agentbolt.engine import Engine
from agentbolt.types import GenerationRequest

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "no_tool_accuracy.json"


async def solved(engine: Engine, tasks: list[dict[str, Any]], temperature: float) -> tuple[int, list[str]]:
    """(problems answered right, the replies) for ``tasks`` at ``temperature``, one fixed seed per task."""
    from examples.calculator.agent import MAX_TOKENS, SYSTEM_PROMPT, reward_of

    tokenizer = engine.tokenizer
    requests = []
    for seed, task in enumerate(tasks):
        messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": task["question"]}]
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        ids = ids["input_ids"] if hasattr(ids, "keys") else ids
        requests.append(
            GenerationRequest(prompt_token_ids=list(ids), max_new_tokens=MAX_TOKENS, temperature=temperature, seed=seed)
        )
    results = await asyncio.gather(*(engine.generate(r) for r in requests))
    replies = [tokenizer.decode(r.response_token_ids, skip_special_tokens=True) for r in results]
    right = sum(int(reward_of(reply, int(task["answer"]))) for reply, task in zip(replies, tasks, strict=True))
    return right, replies


async def main() -> None:
    from examples.calculator.tasks import make_tool_tasks

    tasks = make_tool_tasks("val", 64, 0)
    engine = Engine.load("demo")
    try:
        figures: dict[str, object] = {"benchmark": "no_tool_accuracy", "problems": len(tasks)}
        for name, temperature in (("sampled_t1", 1.0), ("greedy", 0.0)):
            right, replies = await solved(engine, tasks, temperature)
            figures[f"right_{name}"] = right
            figures[f"accuracy_{name}"] = right / len(tasks)
            figures[f"example_{name}"] = replies[0]
            print(f"{name:>10}: {right}/{len(tasks)} right without a tool  e.g. {replies[0][:70]!r}")
    finally:
        engine.close()
    figures["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform()}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(figures, indent=2))
    print(f"wrote {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))  # the examples package, as from the repository root
    asyncio.run(main())
