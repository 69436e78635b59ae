"""`trainer.backend: verl` in a train config: what the run builds, and what it refuses on this machine."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch", reason="the trainer needs the train extra: bash scripts/setup.sh dev,train")

from agentbolt.errors import BadInput
from agentbolt.train.policy import build_policy
from agentbolt.types import TrainConfig

BASE = {"agent": "m:f", "model": "tiny", "train_tasks": {"file": "t.jsonl"}, "trainer": {"backend": "verl"}}


def test_verl_serves_rollouts_from_its_own_replicas_so_an_engine_setting_is_refused(tmp_path: Path) -> None:
    config = TrainConfig.model_validate({**BASE, "engine": {"backend": "vllm", "vllm": {"urls": ["http://h:1/v1"]}}})
    with pytest.raises(BadInput, match="VeRL's own rollout replicas"):
        build_policy(config, tmp_path)


def test_verl_without_a_gpu_says_what_it_needs(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here: this checks the refusal on a machine without one")
    with pytest.raises(BadInput, match=r"needs GPUs|needs the verl extra"):
        build_policy(TrainConfig.model_validate(BASE), tmp_path)
