"""The trainer's own random number streams, kept apart from the process's global ones.

LoRA initialisation and dropout draw from torch's global generators and take no generator argument. So the
trainer keeps its own streams (a :class:`random.Random`, a CPU :class:`torch.Generator` and one for its CUDA
device) and swaps them in only while it works (:meth:`TrainerRandom.active`): constructing or stepping a
trainer leaves the caller's random numbers as they were, and one seed gives the same run every time.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import torch


class TrainerRandom:
    """Python's, torch's CPU and (on a CUDA device) that device's random streams of one trainer.

    Args:
        seed: seeds every stream.
        device: the trainer's device; a CUDA device gets a stream of its own.
    """

    def __init__(self, seed: int, device: torch.device) -> None:
        self.python = random.Random(seed)
        self.cpu = torch.Generator().manual_seed(seed)
        self.cuda = torch.Generator(device=device).manual_seed(seed) if device.type == "cuda" else None

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Make these streams the global ones inside the block; restore the caller's after it.

        What the block draws advances these streams; what it sets (restoring a checkpoint's RNG states)
        becomes their state.
        """
        cuda = self.cuda
        # Every CUDA device: a checkpoint's RNG states name all of them (checkpoint.set_rng_state).
        devices = list(range(torch.cuda.device_count())) if cuda is not None else []
        caller_python = random.getstate()
        with torch.random.fork_rng(devices=devices):
            random.setstate(self.python.getstate())
            torch.set_rng_state(self.cpu.get_state())
            if cuda is not None:
                torch.cuda.set_rng_state(cuda.get_state(), cuda.device)
            try:
                yield
            finally:
                self.python.setstate(random.getstate())
                self.cpu.set_state(torch.get_rng_state())
                if cuda is not None:
                    cuda.set_state(torch.cuda.get_rng_state(cuda.device))
                random.setstate(caller_python)
