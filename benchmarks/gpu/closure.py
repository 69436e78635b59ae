"""The distributions that importing the engine and the trainer needs beyond the GPU image, pinned as installed here.

The GPU image has PyTorch, transformers, PEFT and accelerate (and what they depend on); agentbolt's other
runtime dependencies may be missing there. This imports ``agentbolt.engine`` and ``agentbolt.trainer.trainer``,
reads the module-level imports of every agentbolt module that came with them (``agentbolt/__init__`` brings
the client, so OpenTelemetry and httpx are in), and prints the distribution of each, one ``name==version`` a
line. Only what agentbolt imports itself is listed: what those need in turn is left to ``pip download``'s
resolver, so optional imports a library tries when present (httpx tries rich and click) stay out.

    .venv/bin/python benchmarks/gpu/closure.py > benchmarks/gpu/bundle/requirements.txt
"""

from __future__ import annotations

import ast
import importlib
import importlib.metadata as metadata
import sys
from pathlib import Path

ENTRY_POINTS = ("agentbolt.engine", "agentbolt.trainer.trainer")
IN_IMAGE = {"torch", "transformers", "peft", "accelerate", "agentbolt"}


def module_level_imports(source: str) -> set[str]:
    """Absolute module names imported at module level (not under ``if TYPE_CHECKING``, not inside functions)."""
    names: set[str] = set()
    pending = list(ast.parse(source).body)
    while pending:
        node = pending.pop()
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from a import b` may name a submodule b (a namespace package like opentelemetry has no file)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
            names.add(node.module)
        elif isinstance(node, ast.If) and "TYPE_CHECKING" not in ast.unparse(node.test):
            pending.extend([*node.body, *node.orelse])
        elif isinstance(node, ast.Try):
            pending.extend([*node.body, *node.orelse, *node.finalbody])
    return names


def owners() -> dict[Path, metadata.Distribution]:
    """Installed file -> the distribution that installed it."""
    index = {}
    for dist in metadata.distributions():
        for file in dist.files or []:
            index[Path(str(dist.locate_file(file))).resolve()] = dist
    return index


def main() -> None:
    for name in ENTRY_POINTS:
        importlib.import_module(name)
    ours = [
        m for name, m in list(sys.modules.items()) if name.split(".")[0] == "agentbolt" and getattr(m, "__file__", None)
    ]
    imported = set().union(*(module_level_imports(Path(str(m.__file__)).read_text()) for m in ours))
    index = owners()
    needed: dict[str, str] = {}
    for name in sorted(imported):
        module = sys.modules.get(name)
        file = getattr(module, "__file__", None)
        if file is None or name.split(".")[0] in sys.stdlib_module_names:
            continue
        dist = index.get(Path(file).resolve())
        if dist is not None and dist.metadata["Name"].lower() not in IN_IMAGE:
            needed[dist.metadata["Name"].lower()] = dist.version
    for name, version in sorted(needed.items()):
        print(f"{name}=={version}")


if __name__ == "__main__":
    main()
