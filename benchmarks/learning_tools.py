"""Does the agent learn to act? Tool use and held-out accuracy of the calculator agent on tool-needing problems.

Runs the demo, `agentbolt train examples/calculator/train.yaml`, as the command does (real SmolLM2-135M-Instruct,
embedded engine, gateway, worker processes, GRPO), with fixed seeds. The problems (products of two
2-digit numbers, of a 3-digit and a 2-digit number, sums of three 3-digit numbers) are beyond the model's
head, so a reward needs a well-formed calculator call, its result, and a final answer.

Prints a table per validation point (held-out accuracy, sampled at T=1 as in training; tool-use rate =
share of rollouts with at least one well-formed tool call; malformed-call rate; policy calls per
rollout) and the training-side rates per step, and writes benchmarks/results/learning_tools.json.

    python benchmarks/learning_tools.py
    python benchmarks/learning_tools.py --steps 12 --set rl.credit.strategy=discounted
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from agentbolt.cli import load_train_config
from agentbolt.train import TrainingRun
from agentbolt.trainer.metrics import read_jsonl

ROOT = Path(__file__).resolve().parents[1]
VAL_KEYS = ("val/accuracy", "val/tools/use_rate", "val/tools/malformed_rate", "val/calls/per_rollout")
TRAIN_KEYS = ("reward/mean", "tools/use_rate", "tools/malformed_rate", "calls/per_rollout")
TARGETS = {"tool_use_rate_after": 0.70, "accuracy_after": 0.50, "wall_clock_s": 20 * 60}


def _row(cells: list[str]) -> str:
    return " | ".join(f"{c:>10}" for c in cells)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "examples" / "calculator" / "train.yaml")
    parser.add_argument("--steps", type=int, default=None, help="override the config's steps")
    parser.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "learning_tools.json")
    args = parser.parse_args()

    os.chdir(ROOT)  # the config's agent module and task function are importable from the repository root
    run_dir = f"runs/bench-learning-tools-{int(time.time())}"
    config = load_train_config(args.config, {"steps": args.steps, "run_dir": run_dir}, tuple(args.assignments))
    started = time.monotonic()
    summary = TrainingRun(config).run()
    wall = time.monotonic() - started
    history = read_jsonl(Path(summary["run_dir"]) / "metrics.jsonl")

    print("\nheld-out per validation point (at the val tasks' temperature)")
    print(_row(["step", "accuracy", "tool use", "malformed", "calls"]))
    curve = []
    for record in history:
        if "val/accuracy" in record:
            point = {"step": int(record["step"]), **{k: record.get(k) for k in VAL_KEYS}}
            curve.append(point)
            print(_row([str(point["step"])] + [f"{point[k]:.3f}" if point[k] is not None else "-" for k in VAL_KEYS]))
    print("\ntraining rollouts (T=1) per step")
    print(_row(["step", "reward", "tool use", "malformed", "calls"]))
    train_curve = []
    for record in history:
        if "reward/mean" in record or "tools/use_rate" in record:
            point = {"step": int(record["step"]), **{k: record.get(k) for k in TRAIN_KEYS}}
            train_curve.append(point)
            print(_row([str(point["step"])] + [f"{point[k]:.3f}" if point[k] is not None else "-" for k in TRAIN_KEYS]))

    before, after = summary["val_before"], summary["val_after"]
    figures = {
        "benchmark": "learning_tools",
        "config": config.model_dump(mode="json"),
        "steps": summary["steps"],
        "val_tasks": int(before["n"]),
        "accuracy_before": before["accuracy"],
        "accuracy_after": after["accuracy"],
        "tool_use_rate_before": before.get("tools/use_rate"),
        "tool_use_rate_after": after.get("tools/use_rate"),
        "malformed_rate_before": before.get("tools/malformed_rate"),
        "malformed_rate_after": after.get("tools/malformed_rate"),
        "calls_per_rollout_before": before.get("calls/per_rollout"),
        "calls_per_rollout_after": after.get("calls/per_rollout"),
        "wall_clock_s": wall,
        "val_curve": curve,
        "train_curve": train_curve,
        "run_dir": summary["run_dir"],
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "targets": TARGETS,
    }
    print(
        f"\nheld-out accuracy {before['accuracy']:.3f} -> {after['accuracy']:.3f}; tool-use rate "
        f"{figures['tool_use_rate_before']} -> {figures['tool_use_rate_after']}; {wall / 60:.1f} min wall-clock"
    )
    print("targets: tool-use rate >= 0.70 and held-out accuracy >= 0.50 within 20 minutes")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
