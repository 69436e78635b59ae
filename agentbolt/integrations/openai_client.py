"""``openai`` clients on a rollout's gateway that share one connection pool per process.

Each rollout has its own base URL (the attempt is in the path), so an agent builds a new client per rollout.
``openai.OpenAI(...)`` builds a new HTTP client with it, and with that a TLS context: about 18 ms of CPU on a
2-core machine, which a worker running 64 rollouts at once pays 64 times per training step, under the GIL.
These helpers give the same client over one shared HTTP client instead (openai's own default settings:
timeouts, connection limits, redirects), so a new client costs microseconds and connections are reused::

    client = agentbolt.integrations.openai_client.client(llm)            # was openai.OpenAI(base_url=..., ...)
    client = agentbolt.integrations.openai_client.async_client(llm)      # was openai.AsyncOpenAI(...)

The async one shares a pool per event loop (an asyncio HTTP client belongs to the loop it was made on).
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from typing import TYPE_CHECKING, Any

from agentbolt.integrations import agent_headers
from agentbolt.types import LLM

if TYPE_CHECKING:
    import openai

_lock = threading.Lock()
# openai's own HTTP client classes (its Default*HttpxClient; openai 3 ships them from its own httpx fork)
_sync_http: Any | None = None
_async_http: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = weakref.WeakKeyDictionary()


def client(llm: LLM, agent: str | None = None, **kwargs: Any) -> openai.OpenAI:
    """An ``openai.OpenAI`` client on ``llm``'s gateway URL, over this process's shared HTTP client.

    Args:
        llm: the ``llm`` the agent function was given.
        agent: the agent's name (sent as ``X-Agentbolt-Agent``), for multi-agent systems.
        kwargs: other ``openai.OpenAI`` arguments (max_retries, timeout, default_headers, ...); an
            ``http_client`` of your own replaces the shared one.
    """
    import openai

    global _sync_http
    if "http_client" not in kwargs:
        with _lock:
            if _sync_http is None:
                _sync_http = openai.DefaultHttpxClient()
            kwargs["http_client"] = _sync_http
    return openai.OpenAI(**_arguments(llm, agent, kwargs))


def async_client(llm: LLM, agent: str | None = None, **kwargs: Any) -> openai.AsyncOpenAI:
    """An ``openai.AsyncOpenAI`` client on ``llm``'s gateway URL, over the running loop's shared HTTP client.

    Call it from inside the event loop that will use the client (an async agent function). Arguments as
    :func:`client`.
    """
    import openai

    if "http_client" not in kwargs:
        loop = asyncio.get_running_loop()
        with _lock:
            http = _async_http.get(loop)
            if http is None:
                http = _async_http[loop] = openai.DefaultAsyncHttpxClient()
        kwargs["http_client"] = http
    return openai.AsyncOpenAI(**_arguments(llm, agent, kwargs))


def _arguments(llm: LLM, agent: str | None, kwargs: dict[str, Any]) -> dict[str, Any]:
    headers = {**(kwargs.pop("default_headers", None) or {}), **agent_headers(agent)}
    return {"base_url": llm.base_url, "api_key": llm.api_key, "default_headers": headers or None, **kwargs}
