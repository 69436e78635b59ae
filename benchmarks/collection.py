"""Collection versus the engine: one training step's 64 rollouts through the whole loop, against the bare engine.

The loop is what `agentbolt train` does for a step: enqueue 8 tasks x 8 rollouts, a worker process
(`agentbolt worker`) runs the agent on them (examples/addition: one chat call each, T=1, <= 24 tokens), its
calls go through the server's gateway to the embedded engine and are recorded as spans, then the finished
rollouts and their spans are read back. The bare figure is the same engine generating the same 64 prompts
(rendered as the gateway renders them) with ``Engine.generate`` directly. Sampling makes reply lengths vary
from run to run, so both the time ratio and the time-per-generated-token ratio are reported. Rounds
alternate loop and bare after one warm-up round of each; medians are reported.

    python benchmarks/collection.py                    # the demo model, 3 rounds
    python benchmarks/collection.py --model tiny --rounds 5

Writes benchmarks/results/collection.json (top-level ``ratio`` and ``ratio_per_token``). Target: <= 1.2.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from agentbolt import semconv
from agentbolt.client.http import ServerClient
from agentbolt.engine import Engine
from agentbolt.gateway.backend import EngineBackend
from agentbolt.gateway.text import TokenText
from agentbolt.server.background import BackgroundServer
from agentbolt.train.workers import WorkerProcesses
from agentbolt.types import EngineConfig, GenerationRequest, RolloutCreate, ServerConfig

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the addition example's prompt and tasks, as the worker imports them

from examples.addition.agent import MAX_TOKENS, PROMPT  # noqa: E402
from examples.addition.tasks import make_train_tasks  # noqa: E402

MODEL_NAME = "policy"
TARGET = 1.2


def step_tasks(round_: int, tasks_per_step: int) -> list[dict[str, Any]]:
    return make_train_tasks(tasks_per_step, seed=1000 + round_)


async def bare(engine: Engine, tasks: list[dict[str, Any]], group_size: int) -> tuple[float, int]:
    """Seconds and generated tokens for the engine alone on the step's prompts (each task ``group_size`` times)."""
    text = TokenText(engine.tokenizer)  # the gateway's own rendering of a chat
    ids = [text.chat_prompt([{"role": "user", "content": PROMPT.format(a=t["a"], b=t["b"])}]) for t in tasks]
    requests = [
        GenerationRequest(prompt_token_ids=p, max_new_tokens=MAX_TOKENS, temperature=1.0)
        for p in ids
        for _ in range(group_size)
    ]
    started = time.perf_counter()
    results = await asyncio.gather(*(engine.generate(r) for r in requests))
    return time.perf_counter() - started, sum(len(r.response_token_ids) for r in results)


async def through_the_loop(
    client: ServerClient, tasks: list[dict[str, Any]], group_size: int, round_: int
) -> tuple[float, int]:
    """Seconds from enqueueing the step's rollouts to having them and their spans read back; generated tokens."""
    creates = [
        RolloutCreate(input=task, mode="train", group_id=f"r{round_}-t{i}")
        for i, task in enumerate(tasks)
        for _ in range(group_size)
    ]
    started = time.perf_counter()
    ids = [r.rollout_id for r in await client.enqueue(creates)]
    remaining = ids
    while remaining:
        remaining = (await client.wait(remaining, timeout_s=5.0)).pending
    read = await client.read_rollouts(ids)
    elapsed = time.perf_counter() - started
    tokens = sum(
        len(s.attributes.get(semconv.LLM_RESPONSE_TOKEN_IDS) or ())  # type: ignore[arg-type]
        for r in read
        for s in r.spans
    )
    failed = [r.rollout_id for r in read if r.status != "succeeded"]
    if failed:
        raise RuntimeError(f"{len(failed)} rollouts did not succeed, e.g. {failed[0]}")
    return elapsed, tokens


async def measure(url: str, engine: Engine, rounds: int, tasks_per_step: int, group_size: int) -> list[dict[str, Any]]:
    rows = []
    async with ServerClient(url) as client:
        for round_ in range(rounds + 1):  # round 0 warms both paths up
            tasks = step_tasks(round_, tasks_per_step)
            loop_s, loop_tokens = await through_the_loop(client, tasks, group_size, round_)
            bare_s, bare_tokens = await bare(engine, tasks, group_size)
            row = {
                "round": round_,
                "loop_s": loop_s,
                "loop_tokens": loop_tokens,
                "bare_s": bare_s,
                "bare_tokens": bare_tokens,
                "ratio": loop_s / bare_s,
                "ratio_per_token": (loop_s / max(1, loop_tokens)) / (bare_s / max(1, bare_tokens)),
            }
            print(
                f"round {round_}{' (warm-up)' if round_ == 0 else ''}: loop {loop_s:.2f} s ({loop_tokens} tokens), "
                f"bare engine {bare_s:.2f} s ({bare_tokens} tokens): {row['ratio']:.2f}x, "
                f"{row['ratio_per_token']:.2f}x per token",
                flush=True,
            )
            if round_:
                rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo", help="demo, tiny, a model directory or hub id")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tasks-per-step", type=int, default=8)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "collection.json")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    os.chdir(ROOT)  # the worker imports the agent from the repository root
    defaults = EngineConfig()  # the engine as `agentbolt train` builds it
    engine = Engine.load(args.model, max_batch_size=defaults.max_batch_size, batch_wait_s=defaults.batch_wait_s)
    concurrency = args.tasks_per_step * args.group_size
    with tempfile.TemporaryDirectory() as tmp:
        config = ServerConfig(port=0, store_url=f"sqlite:///{tmp}/agentbolt.db", served_model=MODEL_NAME)
        with (
            BackgroundServer(config, backend=EngineBackend(engine, MODEL_NAME)) as server,
            WorkerProcesses(
                "examples.addition.agent:solve",
                server.url,
                count=1,
                concurrency=concurrency,
                model=MODEL_NAME,
                name="bench",
                cwd=ROOT,
                log_path=Path(tmp) / "workers.log",
            ),
        ):
            rows = asyncio.run(measure(server.url, engine, args.rounds, args.tasks_per_step, args.group_size))
    engine.close()

    figures = {
        "benchmark": "collection",
        "model": args.model,
        "rollouts_per_step": concurrency,
        "ratio": statistics.median(r["ratio"] for r in rows),
        "ratio_per_token": statistics.median(r["ratio_per_token"] for r in rows),
        "loop_s": statistics.median(r["loop_s"] for r in rows),
        "bare_s": statistics.median(r["bare_s"] for r in rows),
        "target": TARGET,
        "rounds": rows,
        "machine": {"cpus": os.cpu_count(), "threads": args.threads, "platform": platform.platform()},
    }
    print(
        f"\nmedian of {len(rows)} rounds: loop {figures['loop_s']:.2f} s vs bare engine {figures['bare_s']:.2f} s: "
        f"{figures['ratio']:.2f}x ({figures['ratio_per_token']:.2f}x per generated token); target <= {TARGET}x"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
