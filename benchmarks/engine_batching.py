"""Engine throughput on the real demo model (SmolLM2-135M-Instruct, de-quantized to float32), four scenarios:

chats      16 concurrent chat requests with dynamic batching versus the same 16 one at a time (greedy, so both
           runs must produce the same tokens: checked and reported).
generate   64 addition prompts ("What is {a} + {b}? Reply with only the number.", chat template) through the
           engine versus transformers' ``model.generate`` on the same prompts, left-padded into one batch of 64,
           with the same sampling (``--temperature``; 0 greedy).
staggered  multi-turn agents arriving over time: agent i starts ``i * --stagger-ms`` after the first with one of the
           chat questions and sends its next turn (the conversation so far plus a follow-up) ``--think-ms`` after
           its last answer.
           Continuous batching versus static batching (greedy: both modes do the same work).
groups     8 groups x 8 identical prompts submitted at once (a GRPO step), sampled at temperature 1 with a seed
           each, with and without prefix sharing.

Runs on the CPU, or on one GPU when there is one. Prints generated tokens/s for each run and writes JSON to
benchmarks/results/engine_batching.json (scenarios not run keep their earlier figures). Each timed figure is
the median of ``--repeats`` runs, the compared variants interleaved. Run against the engine as it was before
continuous batching (an older checkout first on PYTHONPATH), every engine is that static one and the figures
go under the JSON's ``before`` key.

    python benchmarks/engine_batching.py                           # chats: 16 requests x 48 new tokens
    python benchmarks/engine_batching.py --scenario generate --max-new-tokens 24
    python benchmarks/engine_batching.py --scenario all --max-new-tokens 24
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import os
import platform
import random
import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import torch

from agentbolt.engine import Engine, load_tokenizer_and_model
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
ADDITION = "What is {a} + {b}? Reply with only the number."
FOLLOW_UPS = ["Can you say a bit more?", "Now put it in one short sentence."]
SCENARIOS = ("chats", "generate", "staggered", "groups")
# The engine before continuous batching takes neither argument: there, every engine is its static one.
CONTINUOUS = "continuous_batching" in inspect.signature(Engine).parameters


def make_engine(model: Any, tokenizer: Any, *, continuous: bool = True, prefix_sharing: bool = True) -> Engine:
    """An engine over the loaded model (shared by every engine of the run: decoding never changes it)."""
    kwargs: dict[str, Any] = {"max_batch_size": 64}
    if CONTINUOUS:
        kwargs.update(continuous_batching=continuous, prefix_sharing=prefix_sharing)
    return Engine(model, tokenizer, **kwargs)


def load() -> dict[str, float]:
    one, five, _ = os.getloadavg()
    return {"load_1m": round(one, 2), "load_5m": round(five, 2)}


async def timed(
    run: Callable[[], Awaitable[list[GenerationResult]]],
) -> tuple[float, list[GenerationResult]]:
    start = time.perf_counter()
    results = await run()
    return time.perf_counter() - start, results


def tokens_per_s(runs: list[tuple[float, int]]) -> dict[str, float]:
    """Median wall time of (seconds, generated tokens) runs and its tokens/s."""
    seconds = statistics.median(s for s, _ in runs)
    tokens = statistics.median(n for _, n in runs)
    return {"s": round(seconds, 3), "generated_tokens": int(tokens), "tokens_per_s": round(tokens / seconds, 1)}


# --- chats: concurrent versus one at a time ------------------------------------------------------------------


async def chats(model: Any, tokenizer: Any, args: argparse.Namespace) -> dict[str, Any]:
    engine = make_engine(model, tokenizer)
    text = TokenText(tokenizer)  # prompts rendered the way the gateway renders chats
    prompts = [
        text.chat_prompt([{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}]) for i in range(args.requests)
    ]
    new_tokens = args.max_new_tokens or 48
    requests = [GenerationRequest(prompt_token_ids=p, max_new_tokens=new_tokens, temperature=0) for p in prompts]
    await engine.generate(GenerationRequest(prompt_token_ids=prompts[0], max_new_tokens=4, temperature=0))  # warm-up

    one_s, one = await timed(lambda: sequential(engine, requests))
    batch_s, batched = await timed(lambda: concurrent(engine, requests))
    engine.close()

    tokens = sum(len(r.response_token_ids) for r in batched)
    same = sum(a.response_token_ids == b.response_token_ids for a, b in zip(one, batched, strict=True))
    one_tps = sum(len(r.response_token_ids) for r in one) / one_s
    batch_tps = tokens / batch_s
    figures = {
        "requests": args.requests,
        "max_new_tokens": new_tokens,
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
    return figures


async def sequential(engine: Engine, requests: list[GenerationRequest]) -> list[GenerationResult]:
    return [await engine.generate(r) for r in requests]


async def concurrent(engine: Engine, requests: list[GenerationRequest]) -> list[GenerationResult]:
    return list(await asyncio.gather(*(engine.generate(r) for r in requests)))


# --- generate: the engine versus transformers' model.generate -------------------------------------------------


def addition_prompts(tokenizer: Any, n: int) -> list[list[int]]:
    rng = random.Random(0)
    text = TokenText(tokenizer)
    return [
        text.chat_prompt([{"role": "user", "content": ADDITION.format(a=rng.randint(1, 99), b=rng.randint(1, 99))}])
        for _ in range(n)
    ]


def hf_generate(
    model: Any, engine: Engine, prompts: list[list[int]], new_tokens: int, temperature: float
) -> tuple[float, int, list[list[int]]]:
    """``model.generate`` on ``prompts`` left-padded into one batch: (seconds, generated tokens, responses)."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), engine.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(prompt)
        mask[row, width - len(prompt) :] = 1
    ids, mask = ids.to(engine.device), mask.to(engine.device)
    sampling: dict[str, Any] = (
        {"do_sample": True, "temperature": temperature, "top_p": 1.0, "top_k": 0}
        if temperature
        else {"do_sample": False}
    )
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=new_tokens,
            min_new_tokens=0,
            pad_token_id=engine.pad_token_id,
            eos_token_id=sorted(engine.eos_token_ids),
            **sampling,
        )
    seconds = time.perf_counter() - start
    responses = []
    for row in out[:, width:].tolist():  # up to and with the first end-of-turn token; the rest is padding
        end = next((i + 1 for i, t in enumerate(row) if t in engine.eos_token_ids), len(row))
        responses.append(row[:end])
    return seconds, sum(len(r) for r in responses), responses


async def vs_generate(model: Any, tokenizer: Any, args: argparse.Namespace) -> dict[str, Any]:
    engine = make_engine(model, tokenizer)
    new_tokens = args.max_new_tokens or 24
    prompts = addition_prompts(tokenizer, args.prompts)
    requests = [
        GenerationRequest(prompt_token_ids=p, max_new_tokens=new_tokens, temperature=args.temperature, seed=i)
        for i, p in enumerate(prompts)
    ]
    await concurrent(engine, requests[:8])  # warm-up, both paths
    hf_generate(model, engine, prompts[:8], 4, args.temperature)
    engine_runs, generate_runs = [], []
    responses: tuple[list[list[int]], list[list[int]]] = ([], [])
    for _ in range(args.repeats):
        seconds, results = await timed(lambda: concurrent(engine, requests))
        engine_runs.append((seconds, sum(len(r.response_token_ids) for r in results)))
        gen_s, gen_tokens, gen_responses = hf_generate(model, engine, prompts, new_tokens, args.temperature)
        generate_runs.append((gen_s, gen_tokens))
        responses = ([r.response_token_ids for r in results], gen_responses)
    engine.close()
    ours, theirs = tokens_per_s(engine_runs), tokens_per_s(generate_runs)
    figures: dict[str, Any] = {
        "prompts": len(prompts),
        "max_new_tokens": new_tokens,
        "temperature": args.temperature,
        "engine": ours,
        "model_generate": theirs,
        "ratio": round(ours["tokens_per_s"] / theirs["tokens_per_s"], 2),
    }
    if not args.temperature:
        same = sum(a == b for a, b in zip(*responses, strict=True))
        figures["identical_outputs"] = f"{same}/{len(prompts)}"
    print(
        f"engine         : {ours['tokens_per_s']:8.1f} generated tokens/s ({ours['s']:.2f} s)\n"
        f"model.generate : {theirs['tokens_per_s']:8.1f} generated tokens/s ({theirs['s']:.2f} s)\n"
        f"engine / generate: {figures['ratio']:.2f}x"
        + (f"   identical: {figures['identical_outputs']}" if not args.temperature else "")
    )
    return figures


# --- staggered: multi-turn agents arriving over time -----------------------------------------------------------


async def agent(
    engine: Engine, text: TokenText, index: int, args: argparse.Namespace, new_tokens: int
) -> list[GenerationResult]:
    """One multi-turn conversation: a question, then follow-ups on the model's own answers."""
    await asyncio.sleep(index * args.stagger_ms / 1000)
    messages = [{"role": "user", "content": QUESTIONS[index % len(QUESTIONS)]}]
    results = []
    for turn in range(args.turns):
        if turn:
            await asyncio.sleep(args.think_ms / 1000)  # the agent's own work (a tool call) between turns
        prompt = text.chat_prompt(messages)
        result = await engine.generate(
            GenerationRequest(prompt_token_ids=prompt, max_new_tokens=new_tokens, temperature=0)
        )
        results.append(result)
        answer = engine.tokenizer.decode(result.response_token_ids, skip_special_tokens=True)
        follow_up = FOLLOW_UPS[turn % len(FOLLOW_UPS)]
        messages += [{"role": "assistant", "content": answer}, {"role": "user", "content": follow_up}]
    return results


async def conversations(engine: Engine, args: argparse.Namespace, new_tokens: int) -> list[GenerationResult]:
    text = TokenText(engine.tokenizer)
    runs = await asyncio.gather(*(agent(engine, text, i, args, new_tokens) for i in range(args.agents)))
    return [r for run in runs for r in run]


async def staggered(model: Any, tokenizer: Any, args: argparse.Namespace) -> dict[str, Any]:
    new_tokens = args.max_new_tokens or 24
    modes = {"continuous": True, "static": False} if CONTINUOUS else {"static": False}
    engines = {mode: make_engine(model, tokenizer, continuous=c) for mode, c in modes.items()}
    for engine in engines.values():
        await concurrent(engine, [GenerationRequest(prompt_token_ids=[1, 2, 3], max_new_tokens=2)] * 4)  # warm-up
    runs: dict[str, list[tuple[float, int]]] = {mode: [] for mode in modes}
    latency: dict[str, list[float]] = {mode: [] for mode in modes}
    largest: dict[str, int] = {}
    for _ in range(args.repeats):
        for mode, engine in engines.items():
            seconds, results = await timed(lambda engine=engine: conversations(engine, args, new_tokens))
            runs[mode].append((seconds, sum(len(r.response_token_ids) for r in results)))
            latency[mode].append(statistics.mean(r.timings.queued_s + r.timings.generation_s for r in results))
            largest[mode] = max(r.timings.batch_size for r in results)
    for engine in engines.values():
        engine.close()
    figures: dict[str, Any] = {
        "agents": args.agents,
        "turns": args.turns,
        "stagger_ms": args.stagger_ms,
        "think_ms": args.think_ms,
        "max_new_tokens": new_tokens,
    }
    for mode in modes:
        figures[mode] = {
            **tokens_per_s(runs[mode]),
            "mean_call_s": round(statistics.median(latency[mode]), 3),
            "largest_batch": largest[mode],
        }
        print(
            f"{mode:10s}: {figures[mode]['tokens_per_s']:8.1f} generated tokens/s ({figures[mode]['s']:.2f} s for "
            f"{args.agents} agents x {args.turns} turns), mean call {figures[mode]['mean_call_s']:.2f} s, "
            f"largest batch {largest[mode]}"
        )
    if CONTINUOUS:
        figures["speedup"] = round(figures["continuous"]["tokens_per_s"] / figures["static"]["tokens_per_s"], 2)
        print(f"continuous / static: {figures['speedup']:.2f}x")
    return figures


# --- groups: identical prompts with and without prefix sharing -------------------------------------------------


async def groups(model: Any, tokenizer: Any, args: argparse.Namespace) -> dict[str, Any]:
    new_tokens = args.max_new_tokens or 24
    prompts = addition_prompts(tokenizer, args.groups)
    requests = [
        GenerationRequest(prompt_token_ids=p, max_new_tokens=new_tokens, temperature=1.0, seed=g * 100 + i)
        for g, p in enumerate(prompts)
        for i in range(args.group_size)
    ]
    modes = {"shared": True, "unshared": False} if CONTINUOUS else {"unshared": False}
    engines = {mode: make_engine(model, tokenizer, prefix_sharing=s) for mode, s in modes.items()}
    for engine in engines.values():
        await concurrent(engine, requests[:8])  # warm-up
    runs: dict[str, list[tuple[float, int]]] = {mode: [] for mode in modes}
    outputs: dict[str, list[list[int]]] = {}
    for _ in range(args.repeats):
        for mode, engine in engines.items():
            seconds, results = await timed(lambda engine=engine: concurrent(engine, requests))
            runs[mode].append((seconds, sum(len(r.response_token_ids) for r in results)))
            outputs[mode] = [r.response_token_ids for r in results]
    for engine in engines.values():
        engine.close()
    figures: dict[str, Any] = {"groups": args.groups, "group_size": args.group_size, "max_new_tokens": new_tokens}
    for mode in modes:
        figures[mode] = tokens_per_s(runs[mode])
        print(f"{mode:9s}: {figures[mode]['tokens_per_s']:8.1f} generated tokens/s ({figures[mode]['s']:.2f} s)")
    if CONTINUOUS:
        same = sum(a == b for a, b in zip(outputs["shared"], outputs["unshared"], strict=True))
        figures["identical_outputs"] = f"{same}/{len(requests)}"
        figures["speedup"] = round(figures["shared"]["tokens_per_s"] / figures["unshared"]["tokens_per_s"], 2)
        print(
            f"shared / unshared: {figures['speedup']:.2f}x   identical seeded outputs: {figures['identical_outputs']}"
        )
    return figures


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", choices=[*SCENARIOS, "all"], default="chats")
    parser.add_argument("--requests", type=int, default=16, help="chats: requests")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default 48 for chats, 24 for the others")
    parser.add_argument("--prompts", type=int, default=64, help="generate: prompts in the batch")
    parser.add_argument("--temperature", type=float, default=1.0, help="generate: 0 greedy, else sampled")
    parser.add_argument("--agents", type=int, default=32, help="staggered: conversations")
    parser.add_argument("--turns", type=int, default=3, help="staggered: calls per conversation")
    parser.add_argument("--stagger-ms", type=float, default=100.0, help="staggered: between two agents' starts")
    parser.add_argument("--think-ms", type=float, default=50.0, help="staggered: between an answer and the next turn")
    parser.add_argument("--groups", type=int, default=8)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per variant (the median is reported)")
    parser.add_argument("--model", default="demo", help="'demo', a .gguf file or a model directory")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "engine_batching.json")
    args = parser.parse_args()

    tokenizer, model = load_tokenizer_and_model(args.model)
    runners = {"chats": chats, "generate": vs_generate, "staggered": staggered, "groups": groups}
    chosen = SCENARIOS if args.scenario == "all" else (args.scenario,)
    figures: dict[str, Any] = {}
    for name in chosen:
        print(f"--- {name} (engine {'with' if CONTINUOUS else 'before'} continuous batching)")
        before = load()
        result = await runners[name](model, tokenizer, args)
        figures[name] = {**result, "load_before": before, "load_after": load()}

    stored = json.loads(args.out.read_text()) if args.out.is_file() else {}
    target = stored if CONTINUOUS else stored.setdefault("before", {})
    target.update(
        {
            "model": args.model,
            "device": str(next(model.parameters()).device),
            "torch_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "machine": platform.machine(),
            "measured_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
    )
    if "chats" in figures:
        target.update(figures.pop("chats"))  # the 16-chat figures keep their top-level keys
    target.update({"vs_generate" if k == "generate" else k: v for k, v in figures.items()})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(stored, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    asyncio.run(main())
