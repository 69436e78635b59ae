"""``agentbolt worker``: the Lightning Client, running the user's agent on rollouts from a server."""

from __future__ import annotations

from typing import Any

import click

from agentbolt.cli.options import api_key_option, console, mode_choice, run_async, server_option, setup_logging
from agentbolt.errors import AgentboltError

DEFAULT_SHUTDOWN_GRACE_S = 5.0  # agentbolt.client.worker's default (not imported: it pulls in OpenTelemetry)


def _load_agent(spec: str) -> Any:
    from agentbolt.client.rollout import load_function

    try:
        return load_function(spec, "agent")
    except AgentboltError as exc:
        raise click.BadParameter(str(exc), param_hint="AGENT") from exc


@click.command()
@click.argument("agent")
@server_option
@api_key_option
@click.option("-n", "--concurrency", default=1, show_default=True, help="Rollouts run at once.")
@click.option("--max-rollouts", type=int, default=None, help="Stop after this many rollouts.")
@click.option("--idle-exit", type=float, default=None, help="Stop after this many seconds with no rollout.")
@click.option("--mode", "modes", multiple=True, type=mode_choice, help="Only these modes.")
@click.option("--model", default=None, help="Model name for llm.model (default: the server's latest).")
@click.option("--worker-id", default=None, help="Worker id prefix (default HOST-PID).")
@click.option(
    "--shutdown-grace",
    type=click.FloatRange(min=0),
    default=DEFAULT_SHUTDOWN_GRACE_S,
    show_default=True,
    help="On SIGTERM/SIGINT: seconds running rollouts may still finish before they are released (requeued).",
)
@click.option("-v", "--verbose", is_flag=True)
def worker(
    agent: str,
    server: str,
    api_key: str | None,
    concurrency: int,
    max_rollouts: int | None,
    idle_exit: float | None,
    modes: tuple[str, ...],
    model: str | None,
    worker_id: str | None,
    shutdown_grace: float,
    verbose: bool,
) -> None:
    """Run AGENT (MODULE:FUNCTION, a function of (task, llm)) on rollouts from the server.

    Example: agentbolt worker examples.quickstart.agent:solve -n 4 --idle-exit 5

    SIGTERM or SIGINT stops it gracefully: no more rollouts, running ones get --shutdown-grace seconds to
    finish, then are released so the server requeues them at once; a second signal releases at once.
    """
    from agentbolt.client import Worker

    setup_logging(verbose)
    fn = _load_agent(agent)
    w = Worker(
        fn,
        server,
        api_key=api_key,
        concurrency=concurrency,
        worker_id=worker_id,
        modes=list(modes) or None,  # type: ignore[arg-type]
        max_rollouts=max_rollouts,
        idle_exit_s=idle_exit,
        model=model,
        shutdown_grace_s=shutdown_grace,
        handle_signals=True,
    )
    stats = run_async(w.run)
    console.print(
        f"worker done: {stats.claimed} claimed, {stats.succeeded} succeeded, {stats.failed} failed, "
        f"{stats.abandoned} timed out, {stats.released} released, {stats.finish_refused} already ended by the server"
    )
