"""Overhead of the trainer's policy update over a bare forward + backward + optimizer step.

On the demo model (SmolLM2-135M, float32 on the CPU), 32 samples of ~100 prompt + 24 response tokens:

- **trainer**: ``Trainer.step(samples)`` — packing, forward, log-probs, entropy, PPO-clip loss against
  the behaviour log-probs, backward, gradient clipping, AdamW, metrics. No engine is attached, so no
  weights are pushed; the push to an engine is timed once at the end and reported on its own.
- **bare**: the same model and optimizer on the same micro-batches (packed beforehand, outside the
  clock): the same forward (logits of the response positions only), ``-(weight * advantage * logprob).sum()``,
  backward, AdamW — what any trainer must do at least.

The two are run interleaved (trainer, bare, trainer, bare...) after a short warm-up, because the
machine's cores are shared and its speed drifts; medians are reported. Prints tokens/s of both and the
overhead, and writes JSON to benchmarks/results/trainer_step.json.

    python benchmarks/trainer_step.py
    python benchmarks/trainer_step.py --rounds 5 --micro-batch-tokens 2048
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from agentbolt.engine import Engine, load_tokenizer_and_model
from agentbolt.trainer.loss import token_weights
from agentbolt.trainer.micro_batches import pack_micro_batches, response_logits
from agentbolt.trainer.trainer import Trainer
from agentbolt.types import LossConfig, Sample, TrainerConfig


def make_samples(vocab: int, count: int, prompt_tokens: int, response_tokens: int, seed: int) -> list[Sample]:
    """``count`` samples, prompts of prompt_tokens +-10% and responses of exactly response_tokens, in groups of 8."""
    rng = random.Random(seed)
    samples = []
    for i in range(count):
        p = rng.randint(int(prompt_tokens * 0.9), int(prompt_tokens * 1.1))
        samples.append(
            Sample(
                rollout_id=f"r{i}",
                attempt_id=f"a{i}",
                group_id=f"g{i // 8}",
                transition_index=0,
                prompt_token_ids=[rng.randrange(vocab) for _ in range(p)],
                response_token_ids=[rng.randrange(vocab) for _ in range(response_tokens)],
                old_logprobs=[-rng.uniform(0.5, 3.0) for _ in range(response_tokens)],
                advantage=rng.choice([-1.0, 1.0]) * rng.uniform(0.2, 1.5),
                return_value=0.0,
                model_version=0,
            )
        )
    return samples


def bare_step(model: Any, optimizer: torch.optim.Optimizer, batches: list[Any]) -> None:
    """Forward, response log-probs, a plain policy-gradient loss, backward, optimizer step."""
    model.train()
    optimizer.zero_grad(set_to_none=True)
    for batch in batches:
        mask = batch.response_mask
        logits = response_logits(model, batch, slice_logits=True)  # (N, V)
        logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, batch.targets[mask][:, None]).squeeze(-1)
        advantages = batch.advantages[:, None].expand_as(mask)[mask]
        loss = -(batch.weights[mask] * advantages * logp).sum()
        loss.backward()
    optimizer.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo", help="model spec for load_tokenizer_and_model")
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--prompt-tokens", type=int, default=100)
    parser.add_argument("--response-tokens", type=int, default=24)
    parser.add_argument("--micro-batch-tokens", type=int, default=1024, help="token budget of one forward/backward")
    parser.add_argument("--rounds", type=int, default=3, help="timed trainer/bare pairs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "trainer_step.json")
    args = parser.parse_args()

    tokenizer, model = load_tokenizer_and_model(args.model)
    loss = LossConfig()
    config = TrainerConfig(lr=1e-6, micro_batch_tokens=args.micro_batch_tokens, device="cpu", seed=args.seed)
    trainer = Trainer(model, tokenizer, config, loss)
    samples = make_samples(len(tokenizer), args.samples, args.prompt_tokens, args.response_tokens, args.seed)
    tokens = sum(len(s.prompt_token_ids) + len(s.response_token_ids) for s in samples)
    # The bare step gets the trainer's own model, optimizer and micro-batches, packed outside the clock.
    batches = pack_micro_batches(
        samples, token_weights(samples, loss.aggregation), config.micro_batch_tokens, trainer.pad_token_id
    )

    def time_trainer() -> float:
        t0 = time.perf_counter()
        trainer.step(samples)
        return time.perf_counter() - t0

    def time_bare() -> float:
        t0 = time.perf_counter()
        bare_step(trainer.model, trainer.optimizer, batches)
        return time.perf_counter() - t0

    print(f"{args.samples} samples, {tokens} tokens, {len(batches)} micro-batches of <= {config.micro_batch_tokens}")
    # Warm-up on a few samples: optimizer state allocated, kernels and allocator warm.
    trainer.step(samples[:4])
    bare_step(trainer.model, trainer.optimizer, batches[-1:])
    trainer_s, bare_s = [], []
    for round_ in range(args.rounds):
        trainer_s.append(time_trainer())
        bare_s.append(time_bare())
        print(f"round {round_ + 1}: trainer {trainer_s[-1]:.2f} s, bare {bare_s[-1]:.2f} s")

    # Pushing the new weights to an engine (a copy of the model), timed on its own.
    engine = Engine(load_tokenizer_and_model(args.model)[1], tokenizer, device="cpu")
    try:
        t0 = time.perf_counter()
        engine.update_weights(trainer.engine_state_dict(), 1).result()
        push_s = time.perf_counter() - t0
    finally:
        engine.close()

    trainer_med, bare_med = statistics.median(trainer_s), statistics.median(bare_s)
    overhead = trainer_med / bare_med - 1
    result = {
        "benchmark": "trainer_step",
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "model": args.model,
        "samples": args.samples,
        "tokens": tokens,
        "response_tokens": args.samples * args.response_tokens,
        "micro_batches": len(batches),
        "micro_batch_tokens": config.micro_batch_tokens,
        "rounds": args.rounds,
        "trainer_s": [round(s, 3) for s in trainer_s],
        "bare_s": [round(s, 3) for s in bare_s],
        "trainer_tokens_per_s": round(tokens / trainer_med, 1),
        "bare_tokens_per_s": round(tokens / bare_med, 1),
        "overhead_pct": round(100 * overhead, 1),
        "target_overhead_pct": 15.0,
        "weight_push_s": round(push_s, 3),
    }
    print(
        f"trainer step: {result['trainer_tokens_per_s']} tokens/s (median {trainer_med:.2f} s); "
        f"bare step: {result['bare_tokens_per_s']} tokens/s (median {bare_med:.2f} s); "
        f"overhead {result['overhead_pct']}% (target <= 15%); weight push to an engine {push_s:.2f} s"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
