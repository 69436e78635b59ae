"""The ``agentbolt`` command line: one module per command group.

``serve.py`` (``serve``), ``worker.py`` (``worker``), ``queue.py`` (``enqueue``, ``rollouts list/show/spans``,
``export``), ``train.py`` (``train``), ``model.py`` (``model fetch-demo``); ``options.py`` holds what they share.
Commands import their heavy parts (server, engine, trainer) when they run, so ``agentbolt --help`` is quick.
"""

from __future__ import annotations

import click

from agentbolt import __version__
from agentbolt.cli.model import model
from agentbolt.cli.queue import enqueue, export, rollouts, span_tree
from agentbolt.cli.serve import serve
from agentbolt.cli.train import load_train_config, train
from agentbolt.cli.worker import worker

__all__ = ["load_train_config", "main", "span_tree"]


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="agentbolt")
def main() -> None:
    """agentbolt: train the LLM inside any AI agent with reinforcement learning.

    \b
    Typical loop:
      agentbolt serve                                # the Lightning Server (queue, traces, gateway)
      agentbolt enqueue tasks.jsonl                  # put tasks on the queue as rollouts
      agentbolt worker my_agent:solve -n 4           # run your agent on them (Lightning Client)
      agentbolt rollouts list / show ID / spans ID   # look at what happened
    """


for _command in (serve, model, worker, enqueue, rollouts, export, train):
    main.add_command(_command)
