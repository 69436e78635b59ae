"""``Trainer.step`` against the naive full-batch step TRL's GRPOTrainer takes, per token and in peak memory.

The workload is the TRL anchor task's (benchmarks/learning_vs_trl.py): 8 groups of 8 samples, each group one
prompt — SmolLM2's chat template with its default system prompt around ``What is {a} + {b}? Reply with only the
number.`` (45 tokens) — and responses of up to 24 tokens (random ids, lengths uniform in 4..24), GRPO-normalised
advantages, on the demo model (SmolLM2-135M, float32 on the CPU):

- **trainer**: ``Trainer.step(samples)`` at its defaults (token_mean loss, as the anchor task) — packing,
  forward, log-probs, entropy, PPO-clip loss against the behaviour log-probs, backward, gradient clipping,
  AdamW, metrics. No engine is attached, so no weights are pushed.
- **naive**: what TRL does: one right-padded batch of all samples, one forward keeping the logits of the last K
  positions (K covers every row's response, as TRL's ``logits_to_keep``), float32 log-softmax over the
  vocabulary at the response positions, gather, PPO-clip token-mean loss, backward, gradient clipping, AdamW.

Time: the two run interleaved (trainer, naive, trainer, naive...) in one process after a warm-up, because the
machine's cores are shared and its speed drifts; medians are reported, per token (prompt + response tokens of
the samples, the same count for both). Memory: each variant in a fresh process: model, optimizer, a warm-up step
on one sample (AdamW's state allocated), then the peak resident set is reset (``/proc/self/clear_refs``) and one
step runs; its growth is the peak (``VmHWM``) minus the resident set before the step (glibc's mmap threshold
fixed at 128 KiB, so that freed tensors leave the resident set).

    python benchmarks/trainer_step.py
    python benchmarks/trainer_step.py --rounds 5 --threads 1 --set share_prompts=false
    python benchmarks/trainer_step.py --profile   # torch.profiler's top operators of one step of each
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

import agentbolt
from agentbolt.engine import load_tokenizer_and_model
from agentbolt.trainer.trainer import Trainer
from agentbolt.types import LossConfig, Sample, TrainerConfig

PROMPT = "What is {a} + {b}? Reply with only the number."  # examples/addition/agent.py
VARIANTS = ("trainer", "naive")


def make_samples(tokenizer: Any, groups: int, group_size: int, max_response: int, seed: int) -> list[Sample]:
    """``groups`` prompts of the anchor task, ``group_size`` random responses each, GRPO advantages."""
    rng = random.Random(seed)
    vocab = len(tokenizer)
    samples = []
    for g in range(groups):
        messages = [{"role": "user", "content": PROMPT.format(a=rng.randint(1, 9), b=rng.randint(1, 9))}]
        encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        prompt = list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)
        rewards = [float(rng.random() < 0.5) for _ in range(group_size)]
        mean = sum(rewards) / group_size
        std = (sum((r - mean) ** 2 for r in rewards) / group_size) ** 0.5
        for k in range(group_size):
            n = rng.randint(min(4, max_response), max_response)
            samples.append(
                Sample(
                    rollout_id=f"r{g}-{k}",
                    attempt_id=f"a{g}-{k}",
                    group_id=f"g{g}",
                    transition_index=0,
                    prompt_token_ids=prompt,
                    response_token_ids=[rng.randrange(vocab) for _ in range(n)],
                    old_logprobs=[-rng.uniform(0.5, 3.0) for _ in range(n)],
                    advantage=(rewards[k] - mean) / (std + 1e-4),
                    return_value=rewards[k],
                    model_version=0,
                )
            )
    return samples


def naive_step(
    model: Any,
    optimizer: torch.optim.Optimizer,
    samples: list[Sample],
    pad_token_id: int,
    loss: LossConfig,
    grad_clip: float,
) -> None:
    """TRL's update on one right-padded batch: forward, log-softmax gather, PPO-clip token mean, backward, AdamW."""
    lengths = [len(s.prompt_token_ids) + len(s.response_token_ids) for s in samples]
    rows, width = len(samples), max(lengths)
    input_ids = torch.full((rows, width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((rows, width), dtype=torch.long)
    mask = torch.zeros((rows, width - 1), dtype=torch.bool)  # position t predicts token t+1
    old = torch.zeros((rows, width - 1))
    for row, s in enumerate(samples):
        p, n = len(s.prompt_token_ids), lengths[row]
        input_ids[row, :n] = torch.tensor([*s.prompt_token_ids, *s.response_token_ids])
        attention_mask[row, :n] = 1
        mask[row, p - 1 : n - 1] = True
        old[row, p - 1 : n - 1] = torch.tensor(s.old_logprobs)
    advantages = torch.tensor([s.advantage for s in samples])[:, None]  # (B, 1)
    temperatures = torch.tensor([s.temperature for s in samples])[:, None, None]  # (B, 1, 1)
    keep = width - min(len(s.prompt_token_ids) for s in samples) + 1  # the last K positions hold every response

    model.train()
    optimizer.zero_grad(set_to_none=True)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=keep).logits  # (B, K, V)
    logits = logits[:, :-1].float() / temperatures  # (B, K-1, V): positions L-K .. L-2
    logp = torch.log_softmax(logits, dim=-1).gather(-1, input_ids[:, width - keep + 1 :, None]).squeeze(-1)
    tail = mask[:, width - keep :]  # (B, K-1)
    ratio = torch.exp(logp - old[:, width - keep :])
    clipped = torch.clamp(ratio, 1 - loss.clip_low, 1 + loss.clip_high)
    per_token = -torch.minimum(ratio * advantages, clipped * advantages)
    (per_token * tail).sum().div(tail.sum()).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    model.eval()


class Bench:
    """The model, trainer and samples both variants run on."""

    def __init__(self, args: argparse.Namespace) -> None:
        torch.manual_seed(args.seed)
        self.tokenizer, model = load_tokenizer_and_model(args.model)
        self.loss = LossConfig(aggregation="token_mean")
        settings: dict[str, Any] = {"lr": 1e-6, "device": "cpu", "seed": args.seed}
        for assignment in args.assignments:
            key, _, value = assignment.partition("=")
            settings[key] = json.loads(value)
        self.config = TrainerConfig(**settings)
        self.trainer = Trainer(model, self.tokenizer, self.config, self.loss)
        self.samples = make_samples(self.tokenizer, args.groups, args.group_size, args.max_response, args.seed)
        self.tokens = sum(len(s.prompt_token_ids) + len(s.response_token_ids) for s in self.samples)
        self.response_tokens = sum(len(s.response_token_ids) for s in self.samples)
        self.last_metrics: dict[str, float] = {}

    def run(self, variant: str, samples: list[Sample] | None = None) -> None:
        samples = self.samples if samples is None else samples
        if variant == "trainer":
            self.last_metrics = self.trainer.step(samples)
        else:
            grad_clip = self.config.grad_clip or float("inf")
            t = self.trainer
            naive_step(t.model, t.optimizer, samples, t.pad_token_id, self.loss, grad_clip)

    def timed(self, variant: str) -> float:
        t0 = time.perf_counter()
        self.run(variant)
        return time.perf_counter() - t0


def rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def child_memory(args: argparse.Namespace) -> None:
    """One variant's step in this (fresh) process: print its peak resident-set growth as JSON."""
    bench = Bench(args)
    bench.run(args.child, bench.samples[:1])  # AdamW's state allocated, kernels warm
    Path("/proc/self/clear_refs").write_text("5")  # the peak resident set is now the current one
    before = rss_kib("VmRSS")
    bench.run(args.child)
    growth = (rss_kib("VmHWM") - before) / 1024
    print(json.dumps({"variant": args.child, "rss_before_mib": before / 1024, "peak_growth_mib": growth}))


def memory_of(variant: str, argv: list[str]) -> dict[str, float]:
    # A fixed mmap threshold: glibc maps every block of 128 KiB or more on its own and unmaps it when freed, so the
    # resident set follows the tensors alive (the default threshold grows, and freed blocks stay resident).
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}
    out = subprocess.run(
        [sys.executable, __file__, *argv, "--child", variant], check=True, capture_output=True, text=True, env=env
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def profile(bench: Bench, variant: str, rows: int) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        bench.run(variant)
    print(f"\n--- {variant}: top operators by self CPU time ---")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo", help="model spec for load_tokenizer_and_model")
    parser.add_argument("--groups", type=int, default=8)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--max-response", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=3, help="timed trainer/naive pairs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    parser.add_argument(
        "--set", dest="assignments", action="append", default=[], metavar="KEY=JSON", help="a TrainerConfig field"
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--profile", action="store_true", help="print torch.profiler's top operators of each step")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "trainer_step.json")
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.child:
        child_memory(args)
        return
    child_argv = [a for a in sys.argv[1:] if a not in ("--profile", "--no-memory")]

    bench = Bench(args)
    print(f"{len(bench.samples)} samples, {bench.tokens} tokens ({bench.response_tokens} response)")
    print(f"load {os.getloadavg()}")
    for variant in VARIANTS:  # warm-up: optimizer state allocated, kernels and allocator warm
        bench.run(variant, bench.samples[:8])
    seconds: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for round_ in range(args.rounds):
        for variant in VARIANTS:
            seconds[variant].append(bench.timed(variant))
        print(f"round {round_ + 1}: " + ", ".join(f"{v} {seconds[v][-1]:.2f} s" for v in VARIANTS))
    median = {v: statistics.median(seconds[v]) for v in VARIANTS}
    us_per_token = {v: 1e6 * median[v] / bench.tokens for v in VARIANTS}
    ratio = median["trainer"] / median["naive"]
    memory = {} if args.no_memory else {v: memory_of(v, child_argv) for v in VARIANTS}
    if args.profile:
        for variant in VARIANTS:
            profile(bench, variant, rows=20)

    result = {
        "benchmark": "trainer_step",
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_avg_1m_after": os.getloadavg()[0],
        "agentbolt": str(Path(agentbolt.__file__).parent),
        "model": args.model,
        "trainer_config": args.assignments,
        "samples": len(bench.samples),
        "tokens": bench.tokens,
        "response_tokens": bench.response_tokens,
        "micro_batches": bench.last_metrics.get("micro_batches"),
        "rounds": args.rounds,
        "seconds": {v: [round(s, 3) for s in seconds[v]] for v in VARIANTS},
        "us_per_token": {v: round(us_per_token[v], 1) for v in VARIANTS},
        "trainer_over_naive": round(ratio, 3),
        "target_ratio": 1.1,
        "peak_growth_mib": {v: round(m["peak_growth_mib"], 1) for v, m in memory.items()},
    }
    print(
        f"trainer step: {us_per_token['trainer']:.1f} us/token (median {median['trainer']:.2f} s); "
        f"naive step: {us_per_token['naive']:.1f} us/token (median {median['naive']:.2f} s); "
        f"ratio {ratio:.3f} (target <= 1.1)"
    )
    for v, m in memory.items():
        print(f"{v}: peak RSS growth {m['peak_growth_mib']:.0f} MiB over {m['rss_before_mib']:.0f} MiB")
    print(f"load {os.getloadavg()}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
