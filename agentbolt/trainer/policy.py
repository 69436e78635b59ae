"""The trainer seam: what the training loop needs of whatever updates the policy.

``agentbolt train`` (:mod:`agentbolt.train.loop`) talks only to a :class:`PolicyTrainer`: take a batch of
samples, update, publish the weights to whatever serves rollouts, and count the new model version. Two
backends implement it:

- ``embedded`` — :class:`agentbolt.trainer.trainer.Trainer`: PyTorch in this process, on one device, feeding
  the embedded engine (sharing its model, or pushing copies) or vLLM servers (through a weight sink);
- ``verl`` — :class:`agentbolt.trainer.verl.trainer.VerlTrainer`: VeRL's Ray workers (FSDP actor) do the
  update and VeRL's own weight sync reaches its rollout replicas (the ``verl`` extra).

Advantages are agentbolt's in both: the samples arrive with LightningRL credit, AIR and the group
normalisation already applied; a backend only optimises the token-level objective.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

from agentbolt.types import Sample, TrainerCheckpoint


@runtime_checkable
class PolicyTrainer(Protocol):
    """One policy being trained: see the module docstring."""

    steps_done: int  # training-loop steps done (updates and skipped steps): what a checkpoint resumes from
    model_version: int  # the version of the weights the rollout engines serve after the last update

    def step(self, samples: list[Sample]) -> dict[str, float]:
        """One update from ``samples``; the engines serve the new weights as ``model_version + 1`` when it
        returns. Returns the update's metrics (loss, clip_fraction, approx_kl, entropy, grad_norm, lr, ...)."""
        ...

    def skip_step(self) -> None:
        """Count a step that makes no update (nothing to learn from its batch)."""
        ...

    def save(self, directory: str | Path | None = None) -> Path:
        """Write a checkpoint enough to resume from; returns its path."""
        ...

    def resume(self, path: str | Path) -> TrainerCheckpoint:
        """Continue from a checkpoint (or a directory's newest); the engines serve its weights and version."""
        ...

    def close(self) -> None:
        """Release workers, processes and connections."""
        ...
