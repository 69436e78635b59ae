"""`agentbolt train`: the embedded default — server, engine, workers and trainer in one command.

One step of the loop, top to bottom (synchronous on-policy by default):

1. draw ``tasks_per_step`` training tasks; enqueue ``group_size`` rollouts of each (one GRPO group);
2. worker processes (``agentbolt worker``, :mod:`agentbolt.train.workers`) run the user's agent on them; its
   LLM calls go through the server's gateway to the embedded engine, which records every call as a span;
3. wait for the rollouts to finish, read them and their spans back (:meth:`TrainingRun._read_finished`);
4. ``prepare_batch``: spans → transitions → AIR + credit → advantages → samples;
5. ``PolicyTrainer.step``: one policy update; the new weights reach whatever serves rollouts (model version + 1).
   Which trainer and which engine: :mod:`agentbolt.train.policy` (embedded, vLLM, VeRL);
6. log metrics (console, JSONL, TensorBoard); validate every ``val_every`` steps.

With ``max_staleness = k > 0`` (by default 1 when the rollouts are served from weights of their own:
``Policy.overlaps`` in :mod:`agentbolt.train.policy`) the rollouts of the next steps are enqueued before the
current update, so collection and training overlap; a batch is always trained on weights at most ``k`` versions newer
than the ones it was enqueued under, and samples older than that are dropped and counted.

This module composes the stages (server, gateway, engine, client, trainer); the stages never import it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentbolt.adapter import build_episode
from agentbolt.client.http import ServerClient
from agentbolt.client.rollout import load_function
from agentbolt.errors import BadInput
from agentbolt.train.tasks import load_tasks
from agentbolt.train.workers import WorkerProcesses
from agentbolt.trainer.batch import prepare_batch, tool_use_rates
from agentbolt.types import (
    ModelVersionCreate,
    Rollout,
    RolloutConfig,
    RolloutCreate,
    Sample,
    ServerConfig,
    Span,
    TrainConfig,
)

if TYPE_CHECKING:
    from agentbolt.trainer.metrics import MetricsLog
    from agentbolt.trainer.policy import PolicyTrainer

log = logging.getLogger(__name__)

# How long one step's rollouts may take to finish: they may queue for the workers' slots and each attempt may
# run up to rollout_timeout_s before the watchdog ends it, so a few timeouts' worth, plus slack for the
# workers' start-up (imports, the first model call). Past it the run stops and points at workers.log.
COLLECT_TIMEOUTS = 3
COLLECT_SLACK_S = 60.0
WAIT_POLL_S = 5.0  # each long-poll for finished rollouts; between polls the worker processes are checked


@dataclass
class _Batch:
    """The rollouts enqueued for one training step."""

    step: int
    rollout_ids: list[str]


class TrainingRun:
    """One `agentbolt train` run. Use :meth:`run`; see the module docstring for the loop.

    Args:
        config: the run's settings (`agentbolt train`'s YAML file).
        base_dir: what the config's paths (tasks, run dir) and the agent's module are relative to; default
            the current directory.
        console: a rich console to print progress on (None: quiet).

    Raises:
        BadInput: a task split cannot be read, or the agent cannot be imported.
    """

    def __init__(self, config: TrainConfig, base_dir: Path | None = None, console: Any | None = None) -> None:
        self.config = config
        self.base_dir = base_dir or Path.cwd()
        self.run_dir = self.base_dir / (config.run_dir or f"runs/{config.name}")
        self.console = console
        self._rng = random.Random(config.seed)
        self.train_tasks = load_tasks(config.train_tasks, self.base_dir)
        self.val_tasks = load_tasks(config.val_tasks, self.base_dir) if config.val_tasks else []
        load_function(config.agent, "agent")  # fail now, not inside a worker process
        self.server_url: str | None = None  # set once the run's server is up
        self.api_key: str | None = None  # the run's server's key (config.server.api_key or AGENTBOLT_API_KEY)
        self._workers: WorkerProcesses | None = None
        self._loop_started = 0.0  # for the ETA: when the first step of this process began, and its number
        self._first_step = 0

    def run(self) -> dict[str, Any]:
        """Train; returns a summary (first/last validation score, steps, wall-clock, paths)."""
        from agentbolt.gateway.backend import fixed_backends_from_config
        from agentbolt.server.background import BackgroundServer
        from agentbolt.train.policy import build_policy, engine_settings
        from agentbolt.trainer.checkpoint import list_checkpoints
        from agentbolt.trainer.metrics import MetricsLog, write_reward_curve

        cfg = self.config
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.json").write_text(cfg.model_dump_json(indent=2))
        started = time.monotonic()

        policy = build_policy(
            cfg, self.run_dir
        )  # the trainer, and the engine (or vLLM / VeRL replicas) serving its rollouts
        staleness = cfg.max_staleness if cfg.max_staleness is not None else int(policy.overlaps)
        server_config = self._server_config()
        trainer, fixed = policy.trainer, []
        try:
            fixed = fixed_backends_from_config(
                server_config, **engine_settings(cfg)
            )  # served as they are, never updated
            with (
                BackgroundServer(server_config, backend=policy.backend, fixed=fixed) as server,
                self._start_workers(server.url),
            ):
                self.server_url = server.url
                self._say(
                    f"server {server.url} (gateway, SQLite store in {self.run_dir}), model {cfg.model!r}, "
                    f"{cfg.workers} worker process(es) x {cfg.worker_concurrency} rollouts; "
                    f"{cfg.steps} steps of {cfg.tasks_per_step} tasks x {cfg.group_size} rollouts; "
                    f"{policy.description}; "
                    + (f"collection overlaps the update (max_staleness {staleness})" if staleness else "on-policy")
                )
                if not cfg.workers:
                    self._say(
                        f"workers: 0 — start them where the agent runs: agentbolt worker {cfg.agent} "
                        f"--server {server.url} -n {cfg.worker_concurrency} --model {cfg.served_model}"
                        + (" --api-key ..." if self.api_key else "")
                    )
                ckpt_dir = self.run_dir / "checkpoints"
                resume_step = None
                if cfg.resume and list_checkpoints(ckpt_dir):
                    resume_step = trainer.resume(ckpt_dir).step
                metrics = MetricsLog(self.run_dir, tensorboard=cfg.tensorboard, resume_step=resume_step)
                try:
                    summary = asyncio.run(self._loop(server.url, trainer, metrics, staleness))
                    summary["checkpoint"] = str(trainer.save(ckpt_dir))
                finally:
                    metrics.close()
        finally:
            policy.close()
            for b in fixed:
                b.engine.close()
        curve = write_reward_curve(metrics.history, self.run_dir / "reward_curve.png")
        summary.update(wall_clock_s=time.monotonic() - started, run_dir=str(self.run_dir), reward_curve=str(curve))
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        return summary

    def _server_config(self) -> ServerConfig:
        """The run's server (``config.server``): loopback and SQLite in the run dir unless told otherwise.

        Raises:
            BadInput: a host other than loopback without an API key.
        """
        from agentbolt.server.guards import is_loopback

        cfg, where = self.config, self.config.server
        api_key = where.api_key or os.environ.get("AGENTBOLT_API_KEY") or None
        if not api_key and not is_loopback(where.host):
            raise BadInput(
                f"server.host {where.host} is reachable from other machines: give server.api_key "
                "(or set AGENTBOLT_API_KEY), or keep the server on 127.0.0.1"
            )
        self.api_key = api_key
        return ServerConfig(
            host=where.host,
            port=where.port,
            store_url=where.store_url or f"sqlite:///{self.run_dir / 'agentbolt.db'}",
            api_key=api_key,
            served_model=cfg.served_model,
            fixed_models=cfg.fixed_models,
            tool_format=cfg.tool_format,
        )

    # --- the loop ---------------------------------------------------------------------------

    async def _loop(
        self, server_url: str, trainer: PolicyTrainer, metrics: MetricsLog, staleness: int
    ) -> dict[str, Any]:
        """Steps ``trainer`` through the run; ``staleness``: the run's resolved ``max_staleness``."""
        cfg = self.config
        summary: dict[str, Any] = {"steps": 0}
        async with ServerClient(server_url, api_key=self.api_key) as client:
            await client.add_model_version(ModelVersionCreate(version=trainer.model_version, model=cfg.served_model))
            first_step = trainer.steps_done
            if self.val_tasks and first_step == 0:  # a resumed run validated before its first step already
                val = await self._validate(client)
                summary["val_before"] = val
                metrics.log(first_step, {f"val/{k}": v for k, v in val.items()})
            pending: list[_Batch] = []
            self._loop_started, self._first_step = time.monotonic(), first_step
            val_s = 0.0  # time spent validating since the loop started
            for step in range(first_step, cfg.steps):
                while len(pending) < 1 + staleness and step + len(pending) < cfg.steps:
                    pending.append(await self._enqueue_step(client, step + len(pending)))
                batch = pending.pop(0)
                collect_started = time.monotonic()
                await self._wait_finished(client, batch.rollout_ids)
                read_started = time.monotonic()
                rollouts, spans = await self._read_finished(client, batch.rollout_ids)
                collect_s, read_s = time.monotonic() - collect_started, time.monotonic() - read_started
                prepare_started = time.monotonic()
                samples, report = prepare_batch(rollouts, spans, cfg.rl)
                prepare_s = time.monotonic() - prepare_started
                fresh = [s for s in samples if _lag(s, trainer.model_version) <= staleness]
                stale, samples = len(samples) - len(fresh), fresh
                row: dict[str, float] = dict(report.metrics())
                row.update({"collect_s": collect_s, "prepare_s": prepare_s, "transitions/dropped/stale": float(stale)})
                row["read_s"] = read_s  # part of collect_s
                if samples:
                    train_started = time.monotonic()
                    row.update(trainer.step(samples))
                    row["train_s"] = time.monotonic() - train_started
                    await client.add_model_version(
                        ModelVersionCreate(version=trainer.model_version, model=cfg.served_model)
                    )
                else:
                    row["skipped_update"] = 1.0  # every group was uninformative: nothing to learn from
                    trainer.skip_step()
                row["model_version"] = float(trainer.model_version)
                row["train_clock_s"] = time.monotonic() - self._loop_started - val_s  # validation excluded
                last = step + 1 == cfg.steps
                if self.val_tasks and (last or (cfg.val_every and (step + 1) % cfg.val_every == 0)):
                    val_started = time.monotonic()
                    val = await self._validate(client)
                    row["val_s"] = time.monotonic() - val_started
                    val_s += row["val_s"]
                    row.update({f"val/{k}": v for k, v in val.items()})
                    summary["val_after"] = val
                if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0:
                    trainer.save(self.run_dir / "checkpoints")
                metrics.log(step + 1, row)
                self._show(step + 1, row)
                summary["steps"] = step + 1
        return summary

    async def _enqueue_step(self, client: ServerClient, step: int) -> _Batch:
        cfg = self.config
        tasks = self._rng.sample(self.train_tasks, min(cfg.tasks_per_step, len(self.train_tasks)))
        creates = [
            RolloutCreate(
                input=task,
                mode="train",
                group_id=f"step{step}-task{i}",
                config=RolloutConfig(timeout_s=cfg.rollout_timeout_s),
                metadata={"step": step},
            )
            for i, task in enumerate(tasks)
            for _ in range(cfg.group_size)
        ]
        rollouts = await client.enqueue(creates)
        return _Batch(step, [r.rollout_id for r in rollouts])

    async def _collect(
        self, client: ServerClient, rollout_ids: list[str]
    ) -> tuple[list[Rollout], dict[str, list[Span]]]:
        """Wait for the rollouts to finish (:meth:`_wait_finished`); return them with their spans."""
        await self._wait_finished(client, rollout_ids)
        return await self._read_finished(client, rollout_ids)

    async def _wait_finished(self, client: ServerClient, rollout_ids: list[str]) -> None:
        """Wait until every rollout has finished.

        Raises:
            RuntimeError: a worker process exited.
            TimeoutError: they did not finish within the step's collect deadline (see :data:`COLLECT_TIMEOUTS`).
        """
        remaining = list(rollout_ids)
        deadline = time.monotonic() + self.config.rollout_timeout_s * COLLECT_TIMEOUTS + COLLECT_SLACK_S
        while remaining:
            if self._workers is not None:
                self._workers.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{len(remaining)} rollouts did not finish in time; see {self.run_dir / 'workers.log'}"
                )
            result = await client.wait(remaining, timeout_s=WAIT_POLL_S)
            remaining = result.pending

    async def _read_finished(
        self, client: ServerClient, rollout_ids: list[str]
    ) -> tuple[list[Rollout], dict[str, list[Span]]]:
        """Read finished rollouts (with their attempts) and every span of each back from the server.

        With their attempts: the adapter needs to know which attempt ended the rollout, and how.
        """
        read = await client.read_rollouts(rollout_ids)  # one request per 1,000 rollouts, one store read each
        spans = {r.rollout_id: r.spans for r in read}
        rollouts: list[Rollout] = list(read)  # each a Rollout with its spans beside
        return rollouts, spans

    async def _validate(self, client: ServerClient) -> dict[str, float]:
        """Run every validation task once: mean reward, accuracy (share at or above the threshold), count.

        A rollout that finished with no reward (the agent returned none, or it failed) scores 0 and is
        counted in ``no_reward``.
        """
        creates = [
            RolloutCreate(input=task, mode="val", config=RolloutConfig(timeout_s=self.config.rollout_timeout_s))
            for task in self.val_tasks
        ]
        ids = [r.rollout_id for r in await client.enqueue(creates)]
        self._say(f"validating on {len(ids)} held-out tasks ...")
        rollouts, spans = await self._collect(client, ids)
        rewards = [r.reward if r.reward is not None else 0.0 for r in rollouts]
        built = [build_episode(r, spans.get(r.rollout_id, ()), self.config.rl.adapter).episode for r in rollouts]
        return {
            "reward_mean": sum(rewards) / len(rewards),
            "accuracy": sum(r >= self.config.val_success_threshold for r in rewards) / len(rewards),
            "n": float(len(rewards)),
            "no_reward": float(sum(r.reward is None for r in rollouts)),
            **tool_use_rates([e for e in built if e is not None]),
        }

    # --- workers and display ----------------------------------------------------------------

    def _start_workers(self, server_url: str) -> WorkerProcesses:
        """The worker processes (``agentbolt worker``) for the run's server; they start when entered."""
        cfg = self.config
        self._workers = WorkerProcesses(
            cfg.agent,
            server_url,
            count=cfg.workers,
            concurrency=cfg.worker_concurrency,
            model=cfg.served_model,
            name=cfg.name,
            cwd=self.base_dir,
            log_path=self.run_dir / "workers.log",
            api_key=self.api_key,
        )
        return self._workers

    def _say(self, text: str) -> None:
        if self.console is not None:
            self.console.print(text)

    def _show(self, step: int, row: dict[str, float]) -> None:
        if self.console is None:
            return
        from agentbolt.trainer.metrics import console_line

        per_step = (time.monotonic() - self._loop_started) / max(1, step - self._first_step)
        eta = per_step * (self.config.steps - step)
        self.console.print(
            f"step {step}/{self.config.steps} (ETA {eta / 60:.1f} min)  {console_line(row, max_items=8)}"
        )


def _lag(sample: Sample, version: int) -> int:
    """Model versions between the weights that sampled ``sample`` and ``version``; 0 when unknown."""
    return version - sample.model_version if sample.model_version is not None else 0
