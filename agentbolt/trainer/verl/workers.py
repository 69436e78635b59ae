"""VeRL's worker on the CPU platform: ``ActorRolloutRefWorker`` with its process group opened first.

VeRL's workers open their ``torch.distributed`` group with the backend string ``cpu:gloo,{device}:{nccl}``
(``verl/utils/distributed.py``, ``initialize_global_process_group_ray``); on the CPU platform that reads
``cpu:gloo,cpu:gloo``, which torch refuses. VeRL skips the call when a group is open, so this subclass opens a plain
gloo group in its constructor (from the ``RANK``/``WORLD_SIZE``/``MASTER_*`` variables VeRL's Ray worker group sets)
and is otherwise VeRL's worker unchanged. A module of its own, so Ray can import it by name in each worker.
"""

from __future__ import annotations

from typing import Any

from verl.workers.engine_workers import ActorRolloutRefWorker

from agentbolt.trainer.verl.cpu import open_process_group


class GlooActorRolloutRefWorker(ActorRolloutRefWorker):
    """:class:`verl.workers.engine_workers.ActorRolloutRefWorker` whose gloo process group is open before VeRL's
    ``init_model`` needs one."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        open_process_group()
