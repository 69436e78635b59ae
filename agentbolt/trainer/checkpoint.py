"""Trainer checkpoints on disk: written atomically, pruned to the last K, found again on resume.

A checkpoint is a directory ``step-NNNNNN`` holding:

- ``trainer_state.json``: :class:`~agentbolt.types.TrainerCheckpoint` (step, model version, settings);
- ``model/`` (full fine-tuning: Hugging Face layout, safetensors) or ``adapter/`` (LoRA: PEFT layout);
- ``optimizer.pt``: the optimizer's state dict;
- ``rng.pt``: Python's and torch's random number generator states.

It is written under a temporary name in the same directory and renamed into place, so a crash
mid-write never leaves a half checkpoint that looks whole.
"""

from __future__ import annotations

import random
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from agentbolt.errors import BadInput
from agentbolt.types import TrainerCheckpoint

STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.pt"
RNG_FILE = "rng.pt"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def checkpoint_name(step: int) -> str:
    """Directory name of the checkpoint taken after ``step`` policy updates."""
    return f"step-{step:06d}"


def list_checkpoints(directory: Path) -> list[Path]:
    """Complete checkpoints under ``directory``, oldest (fewest steps) first."""
    if not directory.is_dir():
        return []
    found = []
    for child in directory.iterdir():
        match = _STEP_DIR.match(child.name)
        if match and (child / STATE_FILE).is_file():
            found.append((int(match.group(1)), child))
    return [path for _, path in sorted(found)]


def find_checkpoint(path: Path) -> Path:
    """``path`` itself when it is a checkpoint, else the newest checkpoint inside it.

    Raises:
        BadInput: there is no checkpoint there.
    """
    if (path / STATE_FILE).is_file():
        return path
    found = list_checkpoints(path)
    if not found:
        raise BadInput(f"no trainer checkpoint at {path}: expected {STATE_FILE} or step-NNNNNN/ directories")
    return found[-1]


def write_checkpoint(
    directory: Path,
    state: TrainerCheckpoint,
    write_weights: Callable[[Path], None],
    optimizer_state: dict[str, Any],
    rng: dict[str, Any],
    keep: int,
) -> Path:
    """Write one checkpoint atomically as ``directory/step-NNNNNN`` and delete all but the newest ``keep``.

    Args:
        directory: the run's checkpoint directory (created if missing).
        state: what goes into ``trainer_state.json``.
        write_weights: writes the model or adapter files into the directory it is given.
        optimizer_state: ``optimizer.state_dict()``.
        rng: :func:`rng_state` as of the training step the checkpoint is taken at.
        keep: how many checkpoints to keep in ``directory``.

    Returns the checkpoint's path.
    """
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / checkpoint_name(state.step)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=directory))
    try:
        write_weights(tmp)
        torch.save(optimizer_state, tmp / OPTIMIZER_FILE)
        torch.save(rng, tmp / RNG_FILE)
        (tmp / STATE_FILE).write_text(state.model_dump_json(indent=2))
        if final.exists():  # saving the same step again: swap the old one out, then delete it
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}-old-", dir=directory))
            final.rename(old / final.name)
            tmp.rename(final)
            shutil.rmtree(old)
        else:
            tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for stale in list_checkpoints(directory)[:-keep]:
        shutil.rmtree(stale)
    return final


def read_state(checkpoint: Path) -> TrainerCheckpoint:
    """The ``trainer_state.json`` of ``checkpoint``."""
    return TrainerCheckpoint.model_validate_json((checkpoint / STATE_FILE).read_text())


def rng_state() -> dict[str, Any]:
    """Python's and torch's (CPU, and every CUDA device's) random number generator states."""
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
