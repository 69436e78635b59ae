"""Reading tasks: a JSONL file (one task, any JSON value, per line) or a function returning a list.

Used by ``agentbolt train`` for its splits and by ``agentbolt enqueue`` for its file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from agentbolt.client.rollout import load_function
from agentbolt.errors import BadInput
from agentbolt.types import TaskSource


def load_tasks(source: TaskSource, base_dir: Path) -> list[Any]:
    """The tasks of one split, from a JSONL file or a function.

    Args:
        source: the file (relative to ``base_dir``) or ``MODULE:FUNCTION``, and at most how many tasks.
        base_dir: what a relative file path is relative to.

    Raises:
        BadInput: the file is missing or has a bad line, the function cannot be imported, or it
            returns something other than a non-empty list.
    """
    if source.file is not None:
        path = (base_dir / source.file).expanduser()
        if not path.is_file():
            raise BadInput(f"task file {path} does not exist")
        tasks = []
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                tasks.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise BadInput(f"{path}:{number} is not JSON: {exc}") from exc
    else:
        assert source.function is not None
        fn = load_function(source.function, "task function")
        tasks = fn(**source.kwargs)
        if not isinstance(tasks, list):
            raise BadInput(f"{source.function} returned {type(tasks).__name__}; it must return a list of tasks")
    if source.limit is not None:
        tasks = tasks[: source.limit]
    if not tasks:
        raise BadInput(f"no tasks in {source.file or source.function}")
    return tasks
