"""``agentbolt serve``: the Lightning Server (queue, OTLP trace ingest, and with a model the gateway)."""

from __future__ import annotations

import asyncio
import os
from typing import get_args

import click

from agentbolt import __version__
from agentbolt.cli.options import api_key_option, console, one_line_errors, setup_logging
from agentbolt.types import POLICY_MODEL, ServerConfig
from agentbolt.types.config import SpanDurabilitySetting, ToolFormatSetting


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind.")
@click.option("--port", default=8420, show_default=True, type=int, help="Port to listen on.")
@click.option(
    "--store",
    "store_url",
    envvar="AGENTBOLT_STORE",
    default="sqlite:///agentbolt.db",
    show_default=True,
    help="Database URL: sqlite:///PATH or postgresql+asyncpg://USER@HOST:PORT/DB (env AGENTBOLT_STORE).",
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
    "--upstream-logprobs-mode",
    type=click.Choice(["raw", "processed"]),
    default="raw",
    show_default=True,
    help="The engines' --logprobs-mode (raw_logprobs or processed_logprobs): logprobs it makes wrong for a call's "
    "temperature/top_p are not recorded.",
)
@click.option(
    "--served-model", default=POLICY_MODEL, show_default=True, help="Model name clients ask for (GET /v1/models)."
)
@click.option(
    "--fixed-model",
    "fixed_models",
    multiple=True,
    metavar="NAME=MODEL",
    help="Also serve MODEL (like --model) as NAME, on its own embedded engine whose weights never change: for "
    "agents that are not trained. Their calls are traced but never trained on. Repeatable.",
)
@click.option(
    "--tool-format",
    type=click.Choice(get_args(ToolFormatSetting)),
    default="auto",
    show_default=True,
    help="How tools are written into the prompt of a model whose chat template has none: hermes "
    "(<tool_call>{json}</tool_call>), pythonic ([name(arg=value)]), or auto, by model family (SmolLM2: pythonic, "
    "others: hermes).",
)
@click.option("--require-attempt", is_flag=True, help="Refuse gateway calls that name no rollout attempt (403).")
@click.option(
    "--strict-token-fidelity",
    is_flag=True,
    help="Refuse (409) a call whose prompt ids do not extend its attempt's previous prompt and response ids.",
)
@click.option(
    "--span-durability",
    type=click.Choice(get_args(SpanDurabilitySetting)),
    default="auto",
    show_default=True,
    help="When a gateway call's spans are stored. answer: before the call is answered (commits grouped across "
    "calls), so an attempt finished through any server process has them all; finish: just after the answer, "
    "flushed when the attempt finishes on the same process (one process only). auto: answer on PostgreSQL, "
    "finish on SQLite.",
)
@click.option(
    "--span-flush-interval",
    "span_flush_interval_s",
    type=click.FloatRange(0, 10, min_open=True),
    default=0.005,
    show_default=True,
    metavar="SECONDS",
    help="With finish durability: the longest a gateway span waits for its batched write.",
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
    upstream_logprobs_mode: str,
    served_model: str,
    fixed_models: tuple[str, ...],
    tool_format: ToolFormatSetting,
    require_attempt: bool,
    strict_token_fidelity: bool,
    span_durability: SpanDurabilitySetting,
    span_flush_interval_s: float,
    verbose: bool,
) -> None:
    """Run the Lightning Server: rollout queue, OTLP trace ingest at /v1/traces, API docs at /docs,
    and with --model or --upstream the OpenAI-compatible gateway at /v1/chat/completions.

    Without --api-key the server only binds to a loopback address.
    """
    import uvicorn

    setup_logging(verbose)
    from agentbolt.server.guards import is_loopback

    if not api_key and not is_loopback(host):
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
    if processes > 1 and span_durability == "finish":
        raise click.UsageError(
            "--workers > 1 with --span-durability finish: an attempt may finish on another process than the one "
            "holding its unwritten spans, and the rollout would be read incomplete; use answer (or auto)"
        )
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
        upstream_logprobs_mode=upstream_logprobs_mode,
        fixed_models=fixed,
        tool_format=tool_format,
        require_attempt=require_attempt,
        strict_token_fidelity=strict_token_fidelity,
        span_durability=span_durability,
        span_flush_interval_s=span_flush_interval_s,
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
    from agentbolt.gateway.tools import choose_tool_format
    from agentbolt.server import create_app

    with one_line_errors():
        if config.model:
            console.print(f"loading {', '.join([config.model, *fixed.values()])} ...")
        backend = backend_from_config(config)
        fixed_backends = fixed_backends_from_config(config)
    for served in [backend, *fixed_backends] if backend is not None else []:
        tool_format, why = choose_tool_format(config.tool_format, served.tokenizer)
        gateway_note += f"\n  tools for {served.model_name!r} in the {tool_format} format ({why})"
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
