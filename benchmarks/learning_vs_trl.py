"""Time to accuracy against TRL's GRPOTrainer on the anchor task: one-digit addition with SmolLM2-135M-Instruct.

The task, exactly as the TRL run it is compared with: SmolLM2-135M-Instruct in float32 on the CPU, the user
message ``What is {a} + {b}? Reply with only the number.`` through the chat template (its default system
prompt included), a and b uniform in 1..9, reward 1 iff the last integer of the reply equals a + b; 8 prompts x
8 rollouts per update, at most 24 new tokens, temperature 1 with no top-k/top-p, full fine-tuning at lr 1e-5,
no KL. Held out: 100 problems from ``random.Random(1234)``, 2 samples each at T=1, mean accuracy, validated
every 2 updates. It runs ``agentbolt train examples/addition/train.yaml`` in this process, as the command does
(server, gateway, embedded engine, worker process, trainer).

TRL 1.16's GRPOTrainer on the same 2-core machine reached held-out sampled accuracy 0.78 after 196 s of training
and 0.925 after 372 s (validation time excluded); the target is 0.925 within 186 s, half of TRL's.

Prints the curve (training seconds, validation time excluded, against held-out accuracy), the seconds to 0.78
and to 0.925, and the peak resident memory; writes benchmarks/results/learning_vs_trl.json.

    python benchmarks/learning_vs_trl.py
    python benchmarks/learning_vs_trl.py --steps 30 --set trainer.mini_batches=2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
from pathlib import Path
from typing import Any

import torch

from agentbolt.cli import load_train_config
from agentbolt.train import TrainingRun
from agentbolt.trainer.metrics import read_jsonl

ROOT = Path(__file__).resolve().parents[1]
TRL = {"seconds_to_078": 196.0, "seconds_to_0925": 372.0, "version": "1.16", "threads": 2}
TARGET_S = TRL["seconds_to_0925"] / 2


def seconds_to(curve: list[dict[str, Any]], accuracy: float) -> float | None:
    """Training seconds at the first validation point with held-out accuracy >= ``accuracy``; None: never."""
    for point in curve:
        if point["accuracy"] >= accuracy:
            return float(point["train_clock_s"])
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "examples" / "addition" / "train.yaml")
    parser.add_argument("--steps", type=int, default=None, help="override the config's steps")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (TRL's run used 2)")
    parser.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "learning_vs_trl.json")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    os.chdir(ROOT)  # the config's agent module and task functions are importable from the repository root
    run_dir = f"runs/bench-learning-vs-trl-{int(time.time())}"
    config = load_train_config(args.config, {"steps": args.steps, "run_dir": run_dir}, tuple(args.assignments))
    started = time.monotonic()
    summary = TrainingRun(config).run()
    wall = time.monotonic() - started
    history = read_jsonl(Path(summary["run_dir"]) / "metrics.jsonl")

    before = summary["val_before"]["accuracy"]
    curve = [{"step": 0, "train_clock_s": 0.0, "accuracy": before}]
    curve += [
        {"step": int(r["step"]), "train_clock_s": r["train_clock_s"], "accuracy": r["val/accuracy"]}
        for r in history
        if "val/accuracy" in r and "train_clock_s" in r
    ]
    steps = [r for r in history if "train_s" in r]
    print(f"\n{'step':>5} {'train s':>9} {'held-out acc':>13}")
    for point in curve:
        print(f"{point['step']:>5} {point['train_clock_s']:>9.1f} {point['accuracy']:>13.3f}")

    def mean_of(key: str) -> float | None:
        values = [float(r[key]) for r in steps if key in r]
        return sum(values) / len(values) if values else None

    peak_self_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    peak_workers_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    figures = {
        "benchmark": "learning_vs_trl",
        "seconds_to_0925": seconds_to(curve, 0.925),
        "seconds_to_078": seconds_to(curve, 0.78),
        "target_seconds_to_0925": TARGET_S,
        "trl": TRL,
        "accuracy_before": before,
        "accuracy_after": curve[-1]["accuracy"],
        "curve": curve,
        "mean_collect_s": mean_of("collect_s"),
        "mean_train_s": mean_of("train_s"),
        "peak_rss_mb": peak_self_mb,
        "peak_worker_rss_mb": peak_workers_mb,
        "steps": summary["steps"],
        "wall_clock_s": wall,
        "config": config.model_dump(mode="json"),
        "run_dir": summary["run_dir"],
        "machine": {"cpus": os.cpu_count(), "threads": args.threads, "platform": platform.platform()},
    }
    reached = figures["seconds_to_0925"]
    print(
        f"\nheld-out accuracy {before:.3f} -> {figures['accuracy_after']:.3f}; seconds to 0.78: "
        f"{figures['seconds_to_078']}, to 0.925: {reached} (TRL {TRL['seconds_to_0925']:.0f} s, target <= "
        f"{TARGET_S:.0f} s); per step: collect {figures['mean_collect_s']:.1f} s, "
        f"update {figures['mean_train_s']:.1f} s; "
        f"peak RSS {peak_self_mb:.0f} MB (worker {peak_workers_mb:.0f} MB); {wall / 60:.1f} min wall-clock"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
