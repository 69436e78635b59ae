"""Does the demo learn? Held-out accuracy of the calculator agent before and after `agentbolt train`.

Runs the demo exactly as `agentbolt train examples/calculator/train.yaml` does (real SmolLM2-135M-Instruct,
embedded engine, gateway, worker processes, GRPO), with fixed seeds, and reports the held-out (greedy)
accuracy before the first update and after the last, the gain in points, and the wall-clock.
Writes benchmarks/results/learning_calc.json.

    python benchmarks/learning_calc.py                    # the demo's config
    python benchmarks/learning_calc.py --steps 12 --set trainer.lr=3e-5
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

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "examples" / "calculator" / "train.yaml")
    parser.add_argument("--steps", type=int, default=None, help="override the config's steps")
    parser.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "learning_calc.json")
    args = parser.parse_args()

    os.chdir(ROOT)  # the config's agent module and task function are importable from the repository root
    run_dir = f"runs/bench-learning-calc-{int(time.time())}"
    config = load_train_config(args.config, {"steps": args.steps, "run_dir": run_dir}, tuple(args.assignments))
    started = time.monotonic()
    summary = TrainingRun(config).run()
    wall = time.monotonic() - started
    before, after = summary["val_before"], summary["val_after"]
    gain = 100 * (after["accuracy"] - before["accuracy"])
    figures = {
        "benchmark": "learning_calc",
        "config": config.model_dump(mode="json"),
        "steps": summary["steps"],
        "val_tasks": int(before["n"]),
        "accuracy_before": before["accuracy"],
        "accuracy_after": after["accuracy"],
        "gain_points": gain,
        "wall_clock_s": wall,
        "run_dir": summary["run_dir"],
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "targets": {"gain_points": 25, "wall_clock_s": 20 * 60},
    }
    print(f"held-out accuracy (greedy, {int(before['n'])} tasks): {before['accuracy']:.3f} -> {after['accuracy']:.3f}")
    print(f"gain: {gain:+.1f} points in {summary['steps']} steps, {wall / 60:.1f} min wall-clock")
    print("targets: >= +25 points within 20 minutes")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
