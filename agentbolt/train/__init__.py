"""`agentbolt train`: the loop that composes server, gateway, engine, workers and trainer into one run.

``loop.py`` (:class:`TrainingRun`), ``tasks.py`` (:func:`load_tasks`, also used by ``agentbolt enqueue``),
``workers.py`` (:class:`WorkerProcesses`). Only this package and the CLI compose the pipeline's stages.
Importing it does not import torch: the run loads the engine and trainer when it starts.
"""

from agentbolt.train.loop import TrainingRun
from agentbolt.train.tasks import load_tasks
from agentbolt.train.workers import WorkerProcesses

__all__ = ["TrainingRun", "WorkerProcesses", "load_tasks"]
