"""The ``verl`` trainer backend: VeRL's Ray workers (FSDP actor, optional reference) update the policy.

- :mod:`~agentbolt.trainer.verl.batch`: agentbolt's samples -> VeRL's ``DataProto`` (``samples_to_dataproto``);
- :mod:`~agentbolt.trainer.verl.loss`: agentbolt's ``rollout_mean`` objective inside VeRL's update;
- :mod:`~agentbolt.trainer.verl.config`: VeRL's own config, agentbolt's settings mapped onto it, user overrides;
- :mod:`~agentbolt.trainer.verl.trainer`: :class:`VerlTrainer`, the :class:`~agentbolt.trainer.policy.PolicyTrainer`;
- :mod:`~agentbolt.trainer.verl.cpu`: a CPU platform for VeRL, for tests and CPU smoke runs.

Needs the ``verl`` extra (pinned to VeRL 0.9.x). Importing this package imports neither VeRL nor Ray: the names
below load their module on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agentbolt.trainer.verl.batch import loss_agg_mode, pad_rows, samples_to_dataproto
    from agentbolt.trainer.verl.trainer import VerlTrainer

_LAZY = {
    "loss_agg_mode": "agentbolt.trainer.verl.batch",
    "pad_rows": "agentbolt.trainer.verl.batch",
    "samples_to_dataproto": "agentbolt.trainer.verl.batch",
    "VerlTrainer": "agentbolt.trainer.verl.trainer",
}

__all__ = ["VerlTrainer", "loss_agg_mode", "pad_rows", "samples_to_dataproto"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
