"""Fixtures of the framework integration tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture
def tiny_engine_backend(tokenizer: Any) -> Iterator[Any]:
    """The real embedded engine on a tiny random model, as a gateway backend (it answers garbage)."""
    from agentbolt.engine import Engine, tiny_random_model
    from agentbolt.gateway.backend import EngineBackend

    with Engine(tiny_random_model(tokenizer), tokenizer, device="cpu") as engine:
        yield EngineBackend(engine, "policy")
