"""`agentbolt train` end to end on a tiny model: real server, gateway, engine, worker process, trainer."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch", reason="training needs the train extra: bash scripts/setup.sh dev,train")

from safetensors.torch import load_file  # noqa: E402

from agentbolt.engine import load_tokenizer_and_model  # noqa: E402
from agentbolt.train import TrainingRun  # noqa: E402
from agentbolt.types import (  # noqa: E402
    Rollout,
    RolloutConfig,
    RolloutCreate,
    RolloutQuery,
    RolloutStatus,
    RolloutWithSpans,
    TaskSource,
    TrainConfig,
    WaitResult,
)

ROOT = Path(__file__).resolve().parents[2]

CONFIG = """
name: e2e
agent: tests.trainer.e2e_agent:solve
model: tiny
train_tasks: {{file: {tasks}}}
val_tasks: {{file: {tasks}, limit: 4}}
steps: 2
tasks_per_step: 2
group_size: 6
val_every: 1
worker_concurrency: 12
run_dir: {run_dir}
trainer: {{lr: 1.0e-3}}
"""


def llm_span_versions(db: Path) -> dict[str, set[int]]:
    """Model versions on the gateway's LLM-call spans, by rollout mode."""
    query = (
        "select r.mode, json_extract(s.attributes, '$.\"agentbolt.llm.model_version\"') from spans s "
        "join rollouts r using (rollout_id) where json_extract(s.attributes, '$.\"gen_ai.operation.name\"') = 'chat'"
    )
    versions: dict[str, set[int]] = {}
    with sqlite3.connect(db) as conn:
        for mode, version in conn.execute(query):
            versions.setdefault(mode, set()).add(version)
    return versions


def train(tmp_path: Path, extra: str = "") -> Path:
    """Run `agentbolt train` on the e2e config (plus ``extra`` YAML lines) in a subprocess; its run dir."""
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("".join(json.dumps({"question": f"Say something about the number {i}."}) + "\n" for i in range(8)))
    run_dir = tmp_path / "run"
    config = tmp_path / "train.yaml"
    config.write_text(CONFIG.format(tasks=tasks, run_dir=run_dir) + extra)
    done = subprocess.run(
        [sys.executable, "-m", "agentbolt", "train", str(config)], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "step 2/2" in done.stdout
    return run_dir


def test_train_runs_updates_the_weights_and_the_engine_serves_each_new_version(tmp_path: Path) -> None:
    run_dir = train(tmp_path)

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 2
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["step"] > 0]
    assert [r["step"] for r in steps] == [1, 2]
    assert [r["model_version"] for r in steps] == [1, 2]  # one update per step, each pushed to the engine
    assert all(r["samples"] > 0 and r["groups/skipped"] < r["groups/total"] for r in steps)
    assert all("val/accuracy" in r for r in records)
    assert all(r["val/no_reward"] == 0 for r in records)  # counted, and this agent always returns a reward
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert (run_dir / "reward_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # On-policy by default when the engine decodes with the trainer's weights: nothing could overlap the update.
    assert not second_step_enqueued_before_first_update(run_dir / "agentbolt.db")
    # The engine served the new weights: step 2's rollouts ran on version 1, the last validation on 2.
    versions = llm_span_versions(run_dir / "agentbolt.db")
    assert versions["train"] == {0, 1}
    assert versions["val"] == {0, 1, 2}
    with sqlite3.connect(run_dir / "agentbolt.db") as conn:
        assert [v for (v,) in conn.execute("select version from model_versions order by version")] == [0, 1, 2]

    # The trained weights differ from the starting ones (the tiny model is the same for the same seed).
    _, start = load_tokenizer_and_model("tiny")
    checkpoint = Path(summary["checkpoint"])
    trained: dict[str, Any] = {}
    for file in (checkpoint / "model").glob("*.safetensors"):
        trained.update(load_file(file))
    changed = [k for k, v in start.state_dict().items() if k in trained and not torch.equal(v, trained[k])]
    assert changed, "no weight changed after two updates"


def second_step_enqueued_before_first_update(db: Path) -> bool:
    """Whether step 2's rollouts were enqueued before model version 1 (the first update) was announced."""
    with sqlite3.connect(db) as conn:
        (enqueued,) = conn.execute("select min(created_at) from rollouts where json_extract(metadata, '$.step') = 1")
        (updated,) = conn.execute("select created_at from model_versions where version = 1")
    return bool(enqueued[0] < updated[0])


@pytest.mark.parametrize(
    "extra",
    ["max_staleness: 1\n", "engine: {share_weights: false}\n"],
    ids=["explicit", "default-with-an-engine-copy"],
)
def test_train_with_a_staleness_bound_overlaps_collection_and_records_the_lag(tmp_path: Path, extra: str) -> None:
    run_dir = train(tmp_path, extra)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["step"] > 0]
    assert [r["model_version"] for r in steps] == [1, 2]
    # Step 2's rollouts were enqueued before the first update: some may have run on version 0, never older.
    assert second_step_enqueued_before_first_update(run_dir / "agentbolt.db")
    assert all(0 <= r["version_lag_max"] <= 1 for r in steps)
    assert all(r["transitions/dropped/stale"] == 0 for r in steps)


class FinishedAtOnce:
    """A stand-in for the run's ServerClient (a unit test of the validation only): every rollout finishes
    at once with the next reward of ``rewards``."""

    def __init__(self, rewards: list[float | None]) -> None:
        self.rewards = rewards
        self.rollouts: dict[str, Rollout] = {}

    async def enqueue(self, creates: list[RolloutCreate]) -> list[Rollout]:
        for create, reward in zip(creates, self.rewards, strict=True):
            rollout_id = f"r{len(self.rollouts)}"
            self.rollouts[rollout_id] = Rollout(
                rollout_id=rollout_id,
                input=create.input,
                mode=create.mode,
                config=RolloutConfig(),
                status=RolloutStatus.SUCCEEDED if reward is not None else RolloutStatus.FAILED,
                created_at=0.0,
                reward=reward,
            )
        return list(self.rollouts.values())

    async def wait(self, rollout_ids: list[str], timeout_s: float) -> WaitResult:
        return WaitResult(finished=[self.rollouts[i] for i in rollout_ids], pending=[])

    async def read_rollouts(self, rollout_ids: list[str]) -> list[RolloutWithSpans]:
        return [RolloutWithSpans(**dict(self.rollouts[i]), spans=[]) for i in rollout_ids]


def test_validation_scores_a_rollout_without_reward_as_zero_and_counts_it(tmp_path: Path) -> None:
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("".join(json.dumps({"question": str(i)}) + "\n" for i in range(4)))
    split = TaskSource(file=str(tasks))
    config = TrainConfig(agent="tests.trainer.e2e_agent:solve", train_tasks=split, val_tasks=split)
    run = TrainingRun(config, base_dir=ROOT)
    val = asyncio.run(run._validate(FinishedAtOnce([1.0, None, 0.5, 1.0])))  # type: ignore[arg-type]
    assert val == {"reward_mean": 2.5 / 4, "accuracy": 0.5, "n": 4.0, "no_reward": 1.0}


@pytest.mark.postgres
async def test_train_on_postgres_with_a_key_and_workers_started_elsewhere(tmp_path: Path, postgres_url: str) -> None:
    """The scale-out shape of a run: its server on PostgreSQL behind an API key, no worker processes of its own,
    an `agentbolt worker` started separately; the engine keeps its own copy of the weights (share_weights off)."""
    import httpx

    from agentbolt.server.background import free_port
    from agentbolt.store import Store

    port, key = free_port(), "sk-run-key"
    extra = (
        f"workers: 0\nserver: {{port: {port}, store_url: '{postgres_url}', api_key: {key}}}\n"
        "engine: {share_weights: false}\n"
    )
    trainer = asyncio.create_task(asyncio.to_thread(train, tmp_path, extra))
    url = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient() as client:
        for _ in range(600):
            try:
                if (await client.get(f"{url}/health")).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
        assert (await client.get(f"{url}/api/rollouts")).status_code == 401  # the key is required
    worker = subprocess.Popen(  # noqa: ASYNC220 (started once, then awaited on a thread)
        [sys.executable, "-m", "agentbolt", "worker", "tests.trainer.e2e_agent:solve", "--server", url, "-n", "12"],
        cwd=ROOT,
        env={**os.environ, "AGENTBOLT_API_KEY": key},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        run_dir = await trainer
    finally:
        worker.terminate()
        await asyncio.to_thread(worker.wait, 30)
    assert not (run_dir / "agentbolt.db").exists()  # the store was PostgreSQL
    store = Store(postgres_url)
    await store.open()
    try:
        rollouts = (await store.query_rollouts(RolloutQuery(mode="train", limit=1000))).items
    finally:
        await store.close()
    assert len(rollouts) == 2 * 2 * 6 and all(r.status == RolloutStatus.SUCCEEDED for r in rollouts)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 2
