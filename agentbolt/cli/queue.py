"""The queue's commands: ``enqueue`` tasks, look at ``rollouts`` (list, show, spans), ``export`` them as JSONL."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from rich import box
from rich.table import Table
from rich.tree import Tree

from agentbolt import semconv
from agentbolt.cli.options import api_key_option, console, mode_choice, run_async, server_option
from agentbolt.errors import BadInput
from agentbolt.types import RolloutConfig, RolloutCreate, RolloutStatus, Span, SpanStatusCode, TaskSource

ENQUEUE_CHUNK = 1000  # rollouts per enqueue request: large files go in several requests


@click.command()
@click.argument("tasks", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@server_option
@api_key_option
@click.option("--mode", default="train", show_default=True, type=mode_choice)
@click.option("--group-size", default=1, show_default=True, help="Rollouts per task (a GRPO group).")
@click.option("--max-attempts", default=1, show_default=True, help="Attempts per rollout.")
@click.option("--timeout", "timeout_s", type=float, default=None, help="Seconds an attempt may run.")
@click.option("--wait", "wait_s", type=float, default=None, help="Then wait up to this long for them to finish.")
def enqueue(
    tasks: Path,
    server: str,
    api_key: str | None,
    mode: str,
    group_size: int,
    max_attempts: int,
    timeout_s: float | None,
    wait_s: float | None,
) -> None:
    """Enqueue one rollout per task (per line of a JSONL file; each line is any JSON value)."""
    from agentbolt.client import ServerClient
    from agentbolt.train.tasks import load_tasks

    try:
        inputs = load_tasks(TaskSource(file=str(tasks)), Path())
    except BadInput as exc:
        raise click.BadParameter(str(exc), param_hint="TASKS") from exc
    config = RolloutConfig(max_attempts=max_attempts, timeout_s=timeout_s)
    creates = [
        RolloutCreate(input=task, mode=mode, group_id=f"{tasks.stem}-{number}", config=config)
        for number, task in enumerate(inputs, 1)
        for _ in range(group_size)
    ]

    async def go() -> None:
        async with ServerClient(server, api_key) as client:
            rollouts = []
            for start in range(0, len(creates), ENQUEUE_CHUNK):
                rollouts += await client.enqueue(creates[start : start + ENQUEUE_CHUNK])
            console.print(f"enqueued {len(rollouts)} rollout(s) from {tasks}")
            if wait_s is not None:
                result = await client.wait([r.rollout_id for r in rollouts], wait_s)
                console.print(f"{len(result.finished)} finished, {len(result.pending)} still pending")

    run_async(go)


@click.group()
def rollouts() -> None:
    """Look at rollouts and their spans."""


@rollouts.command("list")
@server_option
@api_key_option
@click.option("--status", "statuses", multiple=True, type=click.Choice([s.value for s in RolloutStatus]))
@click.option("--mode", type=mode_choice, default=None)
@click.option("--limit", default=50, show_default=True)
@click.option("--offset", default=0, show_default=True)
def list_rollouts(
    server: str, api_key: str | None, statuses: tuple[str, ...], mode: str | None, limit: int, offset: int
) -> None:
    """List rollouts, oldest first."""
    from agentbolt.client import ServerClient

    async def go() -> None:
        async with ServerClient(server, api_key) as client:
            page = await client.query_rollouts(
                status=[RolloutStatus(s) for s in statuses] or None,
                mode=mode,  # type: ignore[arg-type]
                limit=limit,
                offset=offset,
            )
        table = Table(title=f"rollouts {offset + 1}-{offset + len(page.items)} of {page.total}", box=box.SIMPLE_HEAD)
        # Ids and statuses keep their full width; the input takes what is left of the terminal.
        fixed = (("rollout", 19), ("status", 9), ("mode", 5), ("group", 10), ("try", 3), ("reward", 6))
        for col, width in fixed:
            table.add_column(col, no_wrap=True, width=width, overflow="ellipsis")
        spare = console.width - sum(w for _, w in fixed) - 3 * (len(fixed) + 1)
        table.add_column("input", no_wrap=True, overflow="ellipsis", width=max(spare, 8))
        for r in page.items:
            table.add_row(
                r.rollout_id,
                r.status.value,
                r.mode,
                r.group_id or "",
                str(r.num_attempts),
                "" if r.reward is None else f"{r.reward:g}",
                json.dumps(r.input)[:60],
            )
        console.print(table)

    run_async(go)


@rollouts.command("show")
@click.argument("rollout_id")
@server_option
@api_key_option
def show_rollout(rollout_id: str, server: str, api_key: str | None) -> None:
    """Show one rollout with its attempts."""
    from agentbolt.client import ServerClient

    async def go() -> None:
        async with ServerClient(server, api_key) as client:
            rollout = await client.get_rollout(rollout_id)
        console.print_json(rollout.model_dump_json())

    run_async(go)


# Attribution is the tree's own structure; a stack trace does not fit on one line.
_HIDDEN_IN_TREE = frozenset({semconv.ROLLOUT_ID, semconv.ATTEMPT_ID, semconv.EXCEPTION_STACKTRACE})


def _span_label(span: Span) -> str:
    duration_ms = (span.end_time_ns - span.start_time_ns) / 1e6
    label = f"[bold]{span.name}[/bold] [dim]#{span.sequence_id} {duration_ms:.1f} ms[/dim]"
    shown = {k: v for k, v in span.attributes.items() if k not in _HIDDEN_IN_TREE}
    if shown:
        text = ", ".join(f"{k}={v}" for k, v in list(shown.items())[:6])
        label += f"  [cyan]{text[:160]}[/cyan]"
    if span.status.code is SpanStatusCode.ERROR:
        label += f"  [red]ERROR {span.status.message[:80]}[/red]"
    return label


def span_tree(title: str, spans: list[Span]) -> Tree:
    """A rich tree of spans by parent id; spans whose parent is not among them are roots."""
    tree = Tree(title)
    ids = {s.span_id for s in spans}
    children: dict[str | None, list[Span]] = {}
    for span in spans:
        parent = span.parent_id if span.parent_id in ids else None
        children.setdefault(parent, []).append(span)

    def add(node: Tree, parent: str | None) -> None:
        for span in sorted(children.get(parent, []), key=lambda s: (s.start_time_ns, s.sequence_id)):
            add(node.add(_span_label(span)), span.span_id)

    add(tree, None)
    return tree


@rollouts.command("spans")
@click.argument("rollout_id")
@server_option
@api_key_option
def rollout_spans(rollout_id: str, server: str, api_key: str | None) -> None:
    """Print a rollout's spans as a tree, per attempt."""
    from agentbolt.client import ServerClient

    async def go() -> None:
        async with ServerClient(server, api_key) as client:
            rollout = await client.get_rollout(rollout_id)
            spans = await client.all_spans(rollout_id)
        for attempt in rollout.attempts or []:
            mine = [s for s in spans if s.attempt_id == attempt.attempt_id]
            title = f"attempt {attempt.number} {attempt.attempt_id} [{attempt.status.value}] ({len(mine)} spans)"
            console.print(span_tree(title, mine))
        loose = [s for s in spans if s.attempt_id is None]
        if loose:
            console.print(span_tree(f"rollout-level ({len(loose)} spans)", loose))

    run_async(go)


@click.command()
@server_option
@api_key_option
@click.option(
    "-o", "--out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="File (default stdout)."
)
@click.option("--status", "statuses", multiple=True, type=click.Choice([s.value for s in RolloutStatus]))
@click.option("--mode", type=mode_choice, default=None)
def export(server: str, api_key: str | None, out: Path | None, statuses: tuple[str, ...], mode: str | None) -> None:
    """Export rollouts with their attempts and spans as JSONL (one rollout per line)."""
    from agentbolt.client import ServerClient

    async def go() -> int:
        count = 0
        sink = out.open("w") if out else sys.stdout
        try:
            async with ServerClient(server, api_key) as client:
                offset = 0
                while True:
                    page = await client.query_rollouts(
                        status=[RolloutStatus(s) for s in statuses] or None,
                        mode=mode,  # type: ignore[arg-type]
                        limit=200,
                        offset=offset,
                    )
                    # One read per page: the page's rollouts with their attempts and spans.
                    for rollout in await client.read_rollouts([r.rollout_id for r in page.items]):
                        sink.write(rollout.model_dump_json() + "\n")
                        count += 1
                    offset += len(page.items)
                    if not page.items or offset >= page.total:
                        break
        finally:
            if out:
                sink.close()
        return count

    count = run_async(go)
    if out:
        console.print(f"exported {count} rollout(s) to {out}")
