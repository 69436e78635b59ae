"""Training: samples from rollouts (batch.py, advantages.py), the policy loss (loss.py), the update
(micro_batches.py, trainer.py: ``Trainer``, ``WeightSink``; rng.py), checkpoints and metrics.

A pipeline stage: it imports only the stages before it (types, adapter, credit, ``agentbolt.models``), never
the server, client or gateway; ``agentbolt.train`` composes it with them.

``prepare_batch`` and the advantage estimators need no PyTorch; the names that do (``policy_loss``,
``token_weights``) are imported on first use, so ``import agentbolt.trainer`` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agentbolt.trainer.advantages import Advantages, RolloutReturns, compute_advantages
from agentbolt.trainer.batch import prepare_batch

if TYPE_CHECKING:
    from agentbolt.trainer.loss import policy_loss, token_weights

_NEEDS_TORCH = {"policy_loss": "agentbolt.trainer.loss", "token_weights": "agentbolt.trainer.loss"}

__all__ = ["Advantages", "RolloutReturns", "compute_advantages", "policy_loss", "prepare_batch", "token_weights"]


def __getattr__(name: str) -> Any:
    if name in _NEEDS_TORCH:
        import importlib

        return getattr(importlib.import_module(_NEEDS_TORCH[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
