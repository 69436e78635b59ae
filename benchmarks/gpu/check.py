"""The embedded engine's and trainer's speed and memory on a randomly initialised ~1B Llama-shaped model, in bf16.

Made for a lent GPU machine whose image has PyTorch, transformers, PEFT and accelerate but not agentbolt's other
dependencies: ``benchmarks/gpu/check.sh`` installs those from the bundle ``prepare.sh`` made, then runs this.
The model is built from a config (Llama-3.2-1B's shape over the SmolLM2 tokenizer's 49,152 ids), so nothing
comes from a model hub. Phases, each on its own, so that one failing prints a line and leaves the others' figures:

- **setup**: the tokenizer (saved into the bundle), the random model (kept on the CPU; each phase copies it),
  the training samples.
- **engine**: ``Engine(..., max_batch_size=64)`` in bf16; batches of 1, 16 and 64 requests of 64 random prompt
  tokens, 128 new tokens each, sampled at temperature 1: generated tokens/s.
- **trainer**: ``Trainer.step`` on 64 samples (random ids, behaviour log-probs near the random model's own,
  advantages of +-0.2..1.5), bf16 autocast over float32 weights, with the engine attached, so each step also
  pushes the new weights to it: tokens/s of the update alone (the trainer's own ``update_s``) and of the whole step.
- **baseline**: the naive update on the same samples right-padded into one batch, on a fresh copy at the same
  precision: forward, log-softmax over the whole vocabulary, ``-(advantage * logprob)`` mean, backward, AdamW.

Each phase reports its peak GPU memory (``torch.cuda.max_memory_allocated``, reset as the phase starts) and what
was already allocated then (the trainer phase holds the engine's weights too). The JSON is rewritten after every
phase, so a run cut short keeps what it measured.

    python benchmarks/gpu/check.py                          # on the GPU, the 1B model (check.sh runs this)
    python benchmarks/gpu/check.py --device cpu --size tiny # every phase in seconds, for a check on the CPU
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import gc
import importlib.metadata
import inspect
import json
import logging
import math
import os
import platform
import random
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

BUNDLE = Path(__file__).parent / "bundle"
GIB = 2**30


@dataclass(frozen=True)
class Size:
    """The model's shape and the work each phase does on it."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    prompt_tokens: int  # engine prompts
    new_tokens: int  # engine responses
    sample_prompts: tuple[int, int]  # trainer samples: prompt length range
    sample_responses: tuple[int, int]  # and response length range
    micro_batch_tokens: int


SIZES = {
    # Llama-3.2-1B's shape (tied embeddings): 1.07B parameters over a 49,152-id vocabulary.
    "1b": Size(2048, 8192, 16, 32, 8, 64, 128, (48, 80), (64, 128), 16384),
    "tiny": Size(64, 128, 2, 4, 2, 16, 16, (8, 16), (8, 16), 1024),
}


@dataclass
class Draw:
    """One training sample's data before it becomes an ``agentbolt.types.Sample`` (the baseline needs no agentbolt)."""

    prompt: list[int]
    response: list[int]
    old_logprobs: list[float]
    advantage: float


class TokenIds:
    """Stand-in for a tokenizer the machine's transformers cannot read: the special ids are all the phases use."""

    def __init__(self, facts: dict[str, int]) -> None:
        self.vocab_size = facts["vocab_size"]
        self.eos_token_id = facts["eos_token_id"]
        self.pad_token_id = facts["pad_token_id"]
        self.bos_token_id = facts["bos_token_id"]

    def __len__(self) -> int:
        return self.vocab_size


def load_tokenizer(directory: Path) -> tuple[Any, str]:
    """``(tokenizer, how it was loaded)``: agentbolt's loader, else transformers' generic fast tokenizer over
    ``tokenizer.json``, else the ids prepare.sh recorded (a tokenizer saved by another transformers may not load)."""
    try:
        from agentbolt.models import load_tokenizer as agentbolt_tokenizer

        return agentbolt_tokenizer(str(directory)), "agentbolt.models.load_tokenizer"
    except Exception as exc:
        print(f"setup: agentbolt.models.load_tokenizer failed ({type(exc).__name__}: {exc}); trying tokenizer.json")
    facts = json.loads((BUNDLE / "manifest.json").read_text())["tokenizer"]
    try:
        from transformers import PreTrainedTokenizerFast

        names = json.loads((directory / "tokenizer_config.json").read_text())
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_file=str(directory / "tokenizer.json"),
            **{
                k: names[k]
                for k in ("bos_token", "eos_token", "pad_token", "unk_token")
                if isinstance(names.get(k), str)
            },
        )
        return tokenizer, "PreTrainedTokenizerFast(tokenizer.json)"
    except Exception as exc:
        print(f"setup: tokenizer.json did not load either ({type(exc).__name__}: {exc}); using the recorded ids")
    return TokenIds(facts), "recorded ids (bundle/manifest.json)"


def build_model(size: Size, tokenizer: Any, device: torch.device) -> Any:
    """The random model, float32 on the CPU (the copy each phase starts from), initialised on ``device``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=size.hidden,
        intermediate_size=size.intermediate,
        num_hidden_layers=size.layers,
        num_attention_heads=size.heads,
        num_key_value_heads=size.kv_heads,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    try:
        with torch.device(device):  # initialising 1B weights takes seconds on a GPU, a minute or more on the CPU
            model: Any = LlamaForCausalLM(config)
    except Exception as exc:
        print(f"setup: building on {device} failed ({type(exc).__name__}: {exc}); building on the CPU")
        model = LlamaForCausalLM(config)
    return model.to("cpu", torch.float32).eval()


def make_draws(size: Size, vocab: int, count: int, seed: int = 0) -> list[Draw]:
    """``count`` samples with random ids; behaviour log-probs near -log(vocab), what a random model gives, so the
    policy ratios start near 1 as in an on-policy step."""
    rng = random.Random(seed)
    draws = []
    for _ in range(count):
        p, r = rng.randint(*size.sample_prompts), rng.randint(*size.sample_responses)
        draws.append(
            Draw(
                prompt=[rng.randrange(vocab) for _ in range(p)],
                response=[rng.randrange(vocab) for _ in range(r)],
                old_logprobs=[-math.log(vocab) + rng.uniform(-0.05, 0.05) for _ in range(r)],
                advantage=rng.choice([-1.0, 1.0]) * rng.uniform(0.2, 1.5),
            )
        )
    return draws


class Memory:
    """Peak GPU memory of one phase (None on the CPU)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.at_start: float | None = None

    def start(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.at_start = round(torch.cuda.memory_allocated() / GIB, 3)

    def figures(self) -> dict[str, float | None]:
        if not self.cuda:
            return {"peak_memory_gib": None, "resident_at_start_gib": None}
        torch.cuda.synchronize()
        return {
            "peak_memory_gib": round(torch.cuda.max_memory_allocated() / GIB, 3),
            "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / GIB, 3),
            "resident_at_start_gib": self.at_start,
        }


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bare_step(
    model: Any, optimizer: torch.optim.Optimizer, batch: dict[str, torch.Tensor], dtype: torch.dtype
) -> float:
    """The naive update: full logits of the padded batch, log-softmax, ``-(A * logp)`` token mean, backward, AdamW."""
    ids, mask = batch["input_ids"], batch["response_mask"]  # (B, L), (B, L-1)
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device_type=ids.device.type, dtype=dtype):
        logits = model(input_ids=ids, attention_mask=batch["attention_mask"], use_cache=False).logits  # (B, L, V)
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)  # (B, L-1)
    loss = -(logp * batch["advantages"][:, None] * mask).sum() / mask.sum()
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def padded_batch(draws: list[Draw], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    """``draws`` right-padded to the longest one."""
    width = max(len(d.prompt) + len(d.response) for d in draws)
    ids = torch.full((len(draws), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(draws), width), dtype=torch.long)
    response = torch.zeros((len(draws), width - 1), dtype=torch.float32)
    for row, d in enumerate(draws):
        p, n = len(d.prompt), len(d.prompt) + len(d.response)
        ids[row, :n] = torch.tensor([*d.prompt, *d.response])
        attention[row, :n] = 1
        response[row, p - 1 : n - 1] = 1.0  # positions p-1..n-2 predict the response tokens
    advantages = torch.tensor([d.advantage for d in draws], dtype=torch.float32)
    batch = {"input_ids": ids, "attention_mask": attention, "response_mask": response, "advantages": advantages}
    return {k: v.to(device) for k, v in batch.items()}


class Check:
    """The phases and what they hand each other (tokenizer, model, samples, the engine for the trainer)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.size = SIZES[args.size]
        self.device = torch.device(args.device)
        self.dtype = torch.bfloat16
        self.started = time.monotonic()
        self.tokenizer: Any = None
        self.master: Any = None
        self.draws: list[Draw] = []
        self.engine: Any = None
        self.report: dict[str, Any] = {
            "benchmark": "gpu_check",
            "size": args.size,
            "shape": asdict(self.size),
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "environment": environment(self.device),
            "bundle_install": os.environ.get("GPU_CHECK_BUNDLE_INSTALL", "not run by check.sh"),
        }

    # --- running the phases ----------------------------------------------------------------------------

    def run(self) -> int:
        failed = 0
        for name, phase in (
            ("setup", self.setup),
            ("engine", self.engine_phase),
            ("trainer", self.trainer_phase),
            ("baseline", self.baseline_phase),
        ):
            failed += not self.run_phase(name, phase)
        self.compare()
        self.report["wall_s"] = round(time.monotonic() - self.started, 1)
        self.write()
        print(json.dumps(self.report, indent=2))
        self.summarise()
        print(f"wrote {self.args.out}")
        return 1 if failed else 0

    def run_phase(self, name: str, phase: Callable[[], dict[str, Any]]) -> bool:
        elapsed = time.monotonic() - self.started
        if elapsed > self.args.budget_s:
            self.report[name] = {"error": f"skipped: {elapsed:.0f} s gone, past the {self.args.budget_s:.0f} s budget"}
            print(f"{name}: SKIPPED, {elapsed:.0f} s gone (budget {self.args.budget_s:.0f} s)")
            self.write()
            return False
        print(f"== {name} ({elapsed:.0f} s in)", flush=True)
        memory = Memory(self.device)
        ok = True
        try:
            memory.start()
            figures = phase()
        except Exception as exc:
            traceback.print_exc()
            # what the phase measured before it failed (the engine writes each batch size as it goes) is kept
            figures = {**self.report.get(name, {}), "error": f"{type(exc).__name__}: {exc}"[:2000]}
            print(f"{name}: FAILED: {figures['error'][:300]}", flush=True)
            ok = False
        try:
            figures.update(memory.figures())
        except Exception as exc:  # a broken CUDA context must not hide the phase's own error
            figures["memory_error"] = f"{type(exc).__name__}: {exc}"
        figures["phase_s"] = round(time.monotonic() - self.started - elapsed, 1)
        self.report[name] = figures
        self.write()
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        return ok

    def write(self) -> None:
        self.args.out.parent.mkdir(parents=True, exist_ok=True)
        self.args.out.write_text(json.dumps(self.report, indent=2) + "\n")

    # --- the phases ----------------------------------------------------------------------------------

    def setup(self) -> dict[str, Any]:
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(
                f"CUDA is not available to torch {torch.__version__} (built for CUDA {torch.version.cuda})"
            )
        self.tokenizer, how = load_tokenizer(self.args.tokenizer)
        t0 = time.perf_counter()
        self.master = build_model(self.size, self.tokenizer, self.device)
        build_s = time.perf_counter() - t0
        self.draws = make_draws(self.size, len(self.tokenizer), self.args.samples)
        params = sum(p.numel() for p in self.master.parameters())
        print(
            f"setup: tokenizer via {how} ({len(self.tokenizer)} ids); "
            f"model {params / 1e9:.3f}B parameters in {build_s:.1f} s"
        )
        return {
            "tokenizer": how,
            "vocab_size": len(self.tokenizer),
            "parameters": params,
            "model_build_s": round(build_s, 1),
        }

    def engine_phase(self) -> dict[str, Any]:
        if self.master is None:
            raise RuntimeError("no model: setup failed")
        from agentbolt.engine import Engine
        from agentbolt.types import GenerationRequest

        params = inspect.signature(Engine).parameters
        model = copy.deepcopy(self.master)
        kwargs: dict[str, Any] = {"device": str(self.device), "max_batch_size": max(self.args.batch_sizes)}
        if "dtype" in params:
            kwargs["dtype"] = "bfloat16"
            how = "Engine(dtype='bfloat16')"
        else:
            model = model.to(torch.bfloat16)
            how = "model cast to bfloat16 before Engine (Engine has no dtype parameter)"
        self.engine = Engine(model, self.tokenizer, **kwargs)
        weights = sorted({str(p.dtype) for p in self.engine.model.parameters()})
        print(f"engine: {how}; weights {weights}; shared-model engine available: {'shared' in params}")
        rng = random.Random(1)
        vocab = len(self.tokenizer)

        def requests(n: int, new_tokens: int) -> list[Any]:
            return [
                GenerationRequest(
                    prompt_token_ids=[rng.randrange(vocab) for _ in range(self.size.prompt_tokens)],
                    max_new_tokens=new_tokens,
                    temperature=1.0,
                    seed=rng.randrange(2**31),
                )
                for _ in range(n)
            ]

        async def generate(batch: list[Any]) -> list[Any]:
            return list(await asyncio.gather(*(self.engine.generate(r) for r in batch)))

        for n in sorted({1, max(self.args.batch_sizes)}):  # warm-up: kernels for the smallest and largest batch
            asyncio.run(generate(requests(n, 4)))
        batches: dict[str, Any] = {}
        for n in self.args.batch_sizes:
            batch = requests(n, self.size.new_tokens)
            sync(self.device)
            t0 = time.perf_counter()
            results = asyncio.run(generate(batch))
            sync(self.device)
            seconds = time.perf_counter() - t0
            tokens = sum(len(r.response_token_ids) for r in results)
            seen = sorted({r.timings.batch_size for r in results})
            batches[str(n)] = {
                "requests": n,
                "generated_tokens": tokens,
                "seconds": round(seconds, 3),
                "tokens_per_s": round(tokens / seconds, 1),
                "batch_sizes_seen": seen,
            }
            print(
                f"engine batch {n:3d}: {tokens / seconds:9.1f} generated tokens/s "
                f"({tokens} in {seconds:.2f} s, batches {seen})"
            )
            self.report["engine"] = {"dtype_via": how, "unfinished": True, "batches": batches}  # kept if cut short
            self.write()
        return {
            "dtype_via": how,
            "weights_dtype": weights,
            "shared_supported": "shared" in params,
            "prompt_tokens": self.size.prompt_tokens,
            "new_tokens": self.size.new_tokens,
            "temperature": 1.0,
            "batches": batches,
        }

    def trainer_phase(self) -> dict[str, Any]:
        if self.master is None:
            raise RuntimeError("no model: setup failed")
        from agentbolt.trainer.trainer import Trainer
        from agentbolt.types import LossConfig, Sample, TrainerConfig

        try:
            samples = [
                Sample(
                    rollout_id=f"r{i}",
                    attempt_id=f"a{i}",
                    group_id=f"g{i // 8}",
                    transition_index=0,
                    prompt_token_ids=d.prompt,
                    response_token_ids=d.response,
                    old_logprobs=d.old_logprobs,
                    advantage=d.advantage,
                    return_value=0.0,
                    model_version=0,
                )
                for i, d in enumerate(self.draws)
            ]
            config = TrainerConfig(
                dtype="bfloat16", device=str(self.device), micro_batch_tokens=self.micro_batch_tokens
            )
            trainer = Trainer(copy.deepcopy(self.master), self.tokenizer, config, LossConfig(), engine=self.engine)
            if self.engine is None:
                print("trainer: no engine (its phase failed): the steps push no weights")
            trainer.step(samples[:4])  # warm-up: optimizer state allocated, kernels chosen, a first push
            rounds = []
            for _ in range(self.args.rounds):
                sync(self.device)
                t0 = time.perf_counter()
                metrics = trainer.step(samples)
                sync(self.device)
                rounds.append(
                    {"step_s": time.perf_counter() - t0, **{k: metrics[k] for k in ("update_s", "weight_push_s")}}
                )
            tokens = int(metrics["tokens"])
            step_s = statistics.median(r["step_s"] for r in rounds)
            update_s = statistics.median(r["update_s"] for r in rounds)
            figures = {
                "samples": len(samples),
                "tokens": tokens,
                "response_tokens": int(metrics["response_tokens"]),
                "micro_batch_tokens": config.micro_batch_tokens,
                "micro_batches": int(metrics["micro_batches"]),
                "weights": "float32, bfloat16 autocast",
                "engine_attached": self.engine is not None,
                "rounds": [{k: round(v, 3) for k, v in r.items()} for r in rounds],
                "update_tokens_per_s": round(tokens / update_s, 1),
                "step_tokens_per_s": round(tokens / step_s, 1),
                "weight_push_s": round(statistics.median(r["weight_push_s"] for r in rounds), 3),
                "loss": metrics["loss"],
            }
            print(
                f"trainer: update {figures['update_tokens_per_s']:.1f} tokens/s, whole step with the weight push "
                f"{figures['step_tokens_per_s']:.1f} tokens/s ({tokens} tokens, "
                f"{figures['micro_batches']} micro-batches, push {figures['weight_push_s']:.2f} s)"
            )
            return figures
        finally:  # the baseline's memory figure must not include the engine's or the trainer's weights
            if self.engine is not None:
                self.engine.close()
                self.engine = None

    def baseline_phase(self) -> dict[str, Any]:
        if self.master is None:
            raise RuntimeError("no model: setup failed")
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        model = copy.deepcopy(self.master).to(self.device, torch.float32)
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)  # TrainerConfig's default lr and betas
        batch = padded_batch(self.draws, int(pad), self.device)
        bare_step(model, optimizer, {k: v[:4] for k, v in batch.items()}, self.dtype)  # warm-up
        seconds = []
        for _ in range(self.args.rounds):
            sync(self.device)
            t0 = time.perf_counter()
            bare_step(model, optimizer, batch, self.dtype)
            sync(self.device)
            seconds.append(time.perf_counter() - t0)
        tokens = int(batch["attention_mask"].sum())
        step_s = statistics.median(seconds)
        figures = {
            "samples": len(self.draws),
            "tokens": tokens,
            "padded_tokens": batch["input_ids"].numel(),
            "weights": "float32, bfloat16 autocast",
            "rounds_s": [round(s, 3) for s in seconds],
            "tokens_per_s": round(tokens / step_s, 1),
        }
        print(
            f"baseline: {figures['tokens_per_s']:.1f} tokens/s ({tokens} tokens padded to {figures['padded_tokens']})"
        )
        return figures

    @property
    def micro_batch_tokens(self) -> int:
        return self.args.micro_batch_tokens or self.size.micro_batch_tokens

    def summarise(self) -> None:
        """The headline figures, one line each (after the JSON, so they end the output)."""
        print(f"== summary ({self.args.size} model on {self.device}, {self.report['wall_s']} s)")
        for name in ("setup", "engine", "trainer", "baseline"):
            phase = self.report.get(name, {})
            peak = phase.get("peak_memory_gib")
            before = phase.get("resident_at_start_gib")
            memory = f"peak {peak} GiB ({before} GiB of it allocated before)" if peak is not None else "no GPU memory"
            if "error" in phase:
                print(f"{name:8s}: FAILED: {phase['error'][:200]}")
            elif name == "setup":
                print(f"setup   : {phase['parameters'] / 1e9:.3f}B parameters, tokenizer via {phase['tokenizer']}")
            elif name == "engine":
                rates = ", ".join(f"batch {n}: {b['tokens_per_s']}" for n, b in phase["batches"].items())
                print(f"engine  : generated tokens/s {rates}; {phase['dtype_via']}; {memory}")
            elif name == "trainer":
                print(
                    f"trainer : update {phase['update_tokens_per_s']} tokens/s, "
                    f"whole step {phase['step_tokens_per_s']} tokens/s (push {phase['weight_push_s']} s); {memory}"
                )
            elif name == "baseline":
                print(f"baseline: {phase['tokens_per_s']} tokens/s; {memory}")
        if "trainer_update_vs_baseline" in self.report:
            print(f"trainer update / naive baseline: {self.report['trainer_update_vs_baseline']}x")

    def compare(self) -> None:
        trainer, baseline = self.report.get("trainer", {}), self.report.get("baseline", {})
        if "update_tokens_per_s" in trainer and "tokens_per_s" in baseline:
            ratio = trainer["update_tokens_per_s"] / baseline["tokens_per_s"]
            self.report["trainer_update_vs_baseline"] = round(ratio, 3)


def environment(device: torch.device) -> dict[str, Any]:
    """Versions and the accelerator, so figures from different machines are not mixed up."""

    def version(name: str) -> str | None:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    env: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        **{name: version(name) for name in ("transformers", "peft", "accelerate", "pydantic", "tokenizers")},
        "cpu_count": os.cpu_count(),
        "device": str(device),
    }
    if device.type == "cuda" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(device)
        env.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / GIB, 1))
    return env


def main() -> int:
    out_dir = Path(os.environ["OUT"]) if os.environ.get("OUT") else Path(__file__).parents[1] / "results"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", choices=sorted(SIZES), default="1b")
    parser.add_argument(
        "--tokenizer", type=Path, default=BUNDLE / "tokenizer", help="a tokenizer saved with save_pretrained"
    )
    parser.add_argument("--batch-sizes", type=lambda s: [int(x) for x in s.split(",")], default=[1, 16, 64])
    parser.add_argument("--samples", type=int, default=64, help="samples in one trainer step")
    parser.add_argument("--rounds", type=int, default=3, help="timed steps of the trainer and the baseline (median)")
    parser.add_argument("--micro-batch-tokens", type=int, default=None, help="trainer token budget; default per size")
    parser.add_argument("--budget-s", type=float, default=360.0, help="phases not started by then are skipped")
    parser.add_argument("--out", type=Path, default=out_dir / "gpu_check.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return Check(args).run()


if __name__ == "__main__":
    sys.exit(main())
