"""Fixtures of the VeRL backend's tests: the tiny model as a Hugging Face directory, and VeRL's actor worker run in
this very process on agentbolt's CPU platform (``agentbolt.trainer.verl.cpu``), one rank, a gloo group of one."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

_PROCESS_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any, Path]:
    """(tokenizer, model, directory): the tiny random model and its Hugging Face copy on disk."""
    from agentbolt.models import load_tokenizer_and_model, save_checkpoint

    tokenizer, model = load_tokenizer_and_model("tiny")
    return tokenizer, model, save_checkpoint(model, tokenizer, tmp_path_factory.mktemp("tiny") / "model")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def cpu_process() -> Iterator[None]:
    """This process as rank 0 of 1 on VeRL's CPU platform, with its gloo group open (environment restored after)."""
    import torch.distributed as dist
    from verl.plugin.platform import get_platform, set_platform

    from agentbolt.trainer.verl.cpu import CPU_ENV, CPUPlatform, open_process_group

    keys = (*_PROCESS_ENV, *CPU_ENV)
    saved = {key: os.environ.get(key) for key in keys}
    os.environ.update(CPU_ENV)
    os.environ.update(
        RANK="0",
        WORLD_SIZE="1",
        LOCAL_RANK="0",
        LOCAL_WORLD_SIZE="1",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(_free_port()),
    )
    if get_platform().device_name != "cpu":
        set_platform(CPUPlatform())
    open_process_group()
    try:
        yield
    finally:
        dist.destroy_process_group()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
