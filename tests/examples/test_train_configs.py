"""Every example's train.yaml is a valid `agentbolt train` config whose agent and tasks resolve."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from agentbolt.train import load_tasks
from agentbolt.types import TrainConfig

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "examples").glob("*/train.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.parent.name for p in CONFIGS])
def test_example_train_config_is_valid_and_its_tasks_load(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    config = TrainConfig.model_validate(yaml.safe_load(path.read_text()))
    assert config.agent.startswith(f"examples.{path.parent.name}.")
    assert load_tasks(config.train_tasks, ROOT)
    if config.val_tasks is not None:
        assert load_tasks(config.val_tasks, ROOT)
