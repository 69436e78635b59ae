"""What the gateway generates with: the :class:`Backend` protocol and the embedded engine behind it.

The gateway renders chat messages to prompt token ids itself (with the backend's tokenizer), so every
backend is fed token ids and returns token ids: the ids on a span are exactly what the engine saw and
produced. :class:`EngineBackend` serves the embedded :class:`~agentbolt.engine.Engine`;
``agentbolt.gateway.upstream.UpstreamBackend`` forwards to vLLM-style servers.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from agentbolt.types import GenerationRequest, GenerationResult, ServerConfig

if TYPE_CHECKING:
    from agentbolt.engine import Engine


@runtime_checkable
class Backend(Protocol):
    """A model the gateway can serve: token ids in, token ids and logprobs out."""

    model_name: str  # the name served at /v1/models and accepted as "model"
    tokenizer: Any  # HF tokenizer: chat template, encode, decode
    max_context: int  # prompt + max_new_tokens limit
    eos_token_ids: frozenset[int]

    @property
    def model_version(self) -> int:
        """Version of the weights new requests run on."""
        ...

    def check_request(self, request: GenerationRequest) -> None:
        """Raise :class:`~agentbolt.errors.BadInput` when ``request`` cannot run on this model."""
        ...

    async def generate(self, request: GenerationRequest, *, affinity: str | None = None) -> GenerationResult:
        """Generate one response. ``affinity`` (the rollout id) lets a backend keep a rollout on one replica."""
        ...

    async def aclose(self) -> None:
        """Release the backend's resources."""
        ...


class EngineBackend:
    """The embedded engine as a gateway backend (``affinity`` is ignored: there is one engine).

    Args:
        engine: the engine to serve; the caller keeps ownership (``aclose`` closes it).
        model_name: the name clients ask for in ``model``.
    """

    system = "agentbolt"  # gen_ai.system on the spans

    def __init__(self, engine: Engine, model_name: str) -> None:
        self.engine = engine
        self.model_name = model_name
        self.tokenizer = engine.tokenizer
        self.max_context = engine.max_context
        self.eos_token_ids = engine.eos_token_ids

    @property
    def model_version(self) -> int:
        return self.engine.model_version

    def check_request(self, request: GenerationRequest) -> None:
        self.engine.check_request(request)

    async def generate(self, request: GenerationRequest, *, affinity: str | None = None) -> GenerationResult:
        return await self.engine.generate(request)

    async def aclose(self) -> None:
        await asyncio.to_thread(self.engine.close)


def backend_from_config(config: ServerConfig) -> Backend | None:
    """The backend ``config`` asks for: upstream engines, the embedded engine on ``config.model``, or None.

    Raises:
        BadInput: upstream URLs without a tokenizer (``config.model``).
        ModelUnavailable: the model or tokenizer could not be loaded.
    """
    from agentbolt.errors import BadInput

    if config.upstream_urls:
        if not config.model:
            raise BadInput(
                "upstream engines need the model's tokenizer to render chat prompts: "
                "give --tokenizer (demo, a .gguf file, an HF directory or id)"
            )
        from agentbolt.gateway.upstream import UpstreamBackend
        from agentbolt.models import load_tokenizer

        return UpstreamBackend(
            list(config.upstream_urls),
            load_tokenizer(config.model),
            config.served_model,
            upstream_model=config.upstream_model,
            api_key=config.upstream_api_key,
            logprobs_mode=config.upstream_logprobs_mode,
        )
    if config.model:
        from agentbolt.engine import Engine

        return EngineBackend(Engine.load(config.model), config.served_model)
    return None


def fixed_backends_from_config(config: ServerConfig, **engine_kwargs: Any) -> list[EngineBackend]:
    """An embedded engine for each of ``config.fixed_models`` (served beside the policy, never updated).

    ``engine_kwargs`` go to each :class:`~agentbolt.engine.Engine` (device, batch size...).

    Raises:
        ModelUnavailable: a model could not be loaded (engines loaded before it are closed).
    """
    from agentbolt.engine import Engine

    backends: list[EngineBackend] = []
    try:
        for name, spec in config.fixed_models.items():
            backends.append(EngineBackend(Engine.load(spec, **engine_kwargs), name))
    except BaseException:
        for backend in backends:
            backend.engine.close()
        raise
    return backends
