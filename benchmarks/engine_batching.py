"""Engine throughput: 16 concurrent chat requests with dynamic batching versus the same 16 one at a time.

Runs the real demo model (SmolLM2-135M-Instruct, de-quantized to float32) on the CPU, or on one GPU
when there is one. Greedy decoding, so both runs must produce the same tokens (checked and reported).
Prints generated tokens/s for each run and their ratio, and writes JSON to
benchmarks/results/engine_batching.json.

    python benchmarks/engine_batching.py                 # 16 requests x 48 new tokens
    python benchmarks/engine_batching.py --requests 32 --max-new-tokens 64
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import time
from pathlib import Path

import torch

from agentbolt.engine import Engine
from agentbolt.gateway.text import TokenText
from agentbolt.types import GenerationRequest, GenerationResult

QUESTIONS = [
    "What is the capital of France?",
    "Give me three tips for writing clean Python code.",
    "Explain what a hash table is in two sentences.",
    "Write a haiku about the sea.",
    "How many legs does a spider have?",
    "Translate 'good morning' into Spanish.",
    "What causes rain?",
    "Name a famous painting by Leonardo da Vinci.",
    "Why is the sky blue?",
    "Suggest a name for a pet turtle.",
    "What is 12 times 7?",
    "Describe a cat in one sentence.",
    "What is photosynthesis?",
    "List three primary colours.",
    "How do I boil an egg?",
    "What does CPU stand for?",
]


async def run(
    engine: Engine, requests: list[GenerationRequest], concurrent: bool
) -> tuple[float, list[GenerationResult]]:
    start = time.perf_counter()
    if concurrent:
        results = list(await asyncio.gather(*(engine.generate(r) for r in requests)))
    else:
        results = [await engine.generate(r) for r in requests]
    return time.perf_counter() - start, results


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--model", default="demo", help="'demo', a .gguf file or a model directory")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "engine_batching.json")
    args = parser.parse_args()

    engine = Engine.load(args.model, max_batch_size=max(args.requests, 1))
    text = TokenText(engine.tokenizer)  # prompts rendered the way the gateway renders chats
    prompts = [
        text.chat_prompt([{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}]) for i in range(args.requests)
    ]
    requests = [
        GenerationRequest(prompt_token_ids=p, max_new_tokens=args.max_new_tokens, temperature=0) for p in prompts
    ]
    await engine.generate(GenerationRequest(prompt_token_ids=prompts[0], max_new_tokens=4, temperature=0))  # warm-up

    one_s, one = await run(engine, requests, concurrent=False)
    batch_s, batched = await run(engine, requests, concurrent=True)
    engine.close()

    tokens = sum(len(r.response_token_ids) for r in batched)
    same = sum(a.response_token_ids == b.response_token_ids for a, b in zip(one, batched, strict=True))
    one_tps = sum(len(r.response_token_ids) for r in one) / one_s
    batch_tps = tokens / batch_s
    figures = {
        "model": args.model,
        "device": str(engine.device),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "requests": args.requests,
        "max_new_tokens": args.max_new_tokens,
        "generated_tokens": tokens,
        "one_at_a_time_s": round(one_s, 3),
        "batched_s": round(batch_s, 3),
        "one_at_a_time_tokens_per_s": round(one_tps, 1),
        "batched_tokens_per_s": round(batch_tps, 1),
        "speedup": round(batch_tps / one_tps, 2),
        "batch_sizes": sorted({r.timings.batch_size for r in batched}),
        "identical_outputs": f"{same}/{args.requests}",
    }
    print(f"one at a time : {one_tps:8.1f} generated tokens/s ({one_s:.1f} s)")
    print(
        f"batched       : {batch_tps:8.1f} generated tokens/s ({batch_s:.1f} s, batch sizes {figures['batch_sizes']})"
    )
    print(f"speedup       : {figures['speedup']:.2f}x   identical greedy outputs: {same}/{args.requests}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    asyncio.run(main())
