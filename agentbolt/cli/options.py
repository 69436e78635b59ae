"""What every command shares: the ``--server`` and ``--api-key`` options, the console, logging, and
agentbolt errors shown as a one-line message with exit status 1."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

import click
from rich.console import Console

from agentbolt.errors import AgentboltError

T = TypeVar("T")
console = Console()
DEFAULT_SERVER = "http://127.0.0.1:8420"

server_option = click.option(
    "--server",
    envvar="AGENTBOLT_SERVER",
    default=DEFAULT_SERVER,
    show_default=True,
    help="URL of the agentbolt server (env AGENTBOLT_SERVER).",
)
api_key_option = click.option(
    "--api-key",
    envvar="AGENTBOLT_API_KEY",
    default=None,
    help="The server's API key (env AGENTBOLT_API_KEY). Never printed.",
)
mode_choice = click.Choice(["train", "val", "test"])


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


@contextlib.contextmanager
def one_line_errors() -> Iterator[None]:
    """Turn an agentbolt error raised inside the block into a one-line message and exit status 1."""
    try:
        yield
    except AgentboltError as exc:
        console.print(f"[red]error:[/red] {exc}")
        sys.exit(1)


def run_async(coro_fn: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine; agentbolt errors become a one-line message and exit status 1."""
    with one_line_errors():
        return asyncio.run(coro_fn())  # type: ignore[arg-type]
