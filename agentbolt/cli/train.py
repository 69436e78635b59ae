"""``agentbolt train``: server, engine, workers and trainer in one command, from a YAML config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from agentbolt.cli.options import console, one_line_errors, setup_logging
from agentbolt.types import TrainConfig


def _set_override(data: dict[str, Any], assignment: str) -> None:
    """Apply one ``--set a.b.c=VALUE`` (VALUE read as YAML) to the config's raw data."""
    import yaml

    key, sep, raw = assignment.partition("=")
    if not sep or not key.strip():
        raise click.BadParameter(f"{assignment!r} should be KEY=VALUE, e.g. rl.credit.strategy=discounted")
    node = data
    *parents, leaf = key.strip().split(".")
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise click.BadParameter(f"{key}: {part} is not a section of the config")
        node = child
    node[leaf] = yaml.safe_load(raw)


def load_train_config(path: Path, overrides: dict[str, Any], assignments: tuple[str, ...] = ()) -> TrainConfig:
    """The TrainConfig from a YAML file, then ``--set`` assignments, then the named flags."""
    import yaml
    from pydantic import ValidationError

    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise click.BadParameter(f"{path} is not valid YAML: {exc}", param_hint="CONFIG") from exc
    if not isinstance(data, dict):
        raise click.BadParameter(f"{path} should hold a mapping of settings", param_hint="CONFIG")
    for assignment in assignments:
        _set_override(data, assignment)
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg']}" for e in exc.errors()[:10])
        raise click.BadParameter(f"{path}: {problems}", param_hint="CONFIG") from None


@click.command()
@click.argument("config", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--steps", type=int, default=None, help="Policy updates to run (overrides the config).")
@click.option("--model", default=None, help="'demo', 'tiny', a .gguf file, a model directory or a hub id.")
@click.option("--name", default=None, help="Run name (run dir runs/NAME).")
@click.option("--run-dir", default=None, help="Where metrics, checkpoints and the store go.")
@click.option("--tasks-per-step", type=int, default=None, help="Tasks (groups) per step.")
@click.option("--group-size", type=int, default=None, help="Rollouts per task.")
@click.option("--val-every", type=int, default=None, help="Validate every this many steps.")
@click.option("--workers", type=int, default=None, help="Worker processes running the agent.")
@click.option("--seed", type=int, default=None, help="Seed of task sampling and the trainer.")
@click.option("--resume", is_flag=True, default=None, help="Continue from the run dir's newest checkpoint.")
@click.option(
    "--set",
    "assignments",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override any setting, e.g. --set rl.credit.strategy=discounted --set trainer.lr=2e-5 (repeatable).",
)
@click.option("-v", "--verbose", is_flag=True, help="Log more.")
def train(config: Path, assignments: tuple[str, ...], verbose: bool, **flags: Any) -> None:
    """Train the agent's model with RL: server, engine, workers and trainer in one command.

    CONFIG is a YAML file of settings (see agentbolt.types.TrainConfig; every field but `agent` and
    `train_tasks` has a default). Paths and the agent's module are relative to the current directory.
    Writes runs/NAME/: metrics.jsonl, tensorboard/, reward_curve.png, checkpoints/, summary.json.

    Example: agentbolt train examples/calculator/train.yaml --steps 2
    """
    from agentbolt.train import TrainingRun

    setup_logging(verbose)
    cfg = load_train_config(config, flags, assignments)
    with one_line_errors():
        summary = TrainingRun(cfg, console=console).run()
    before, after = summary.get("val_before"), summary.get("val_after")
    if before and after:
        console.print(
            f"validation accuracy {before['accuracy']:.3f} -> {after['accuracy']:.3f} "
            f"(reward {before['reward_mean']:.3f} -> {after['reward_mean']:.3f})"
        )
    console.print(
        f"{summary['steps']} step(s) in {summary['wall_clock_s']:.0f}s; run dir {summary['run_dir']}, "
        f"reward curve {summary['reward_curve']}"
    )
