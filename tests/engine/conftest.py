"""Fixtures of the engine tests: the demo model's tokenizer, and tiny random models over it."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("torch", reason="the engine needs the train extra: bash scripts/setup.sh dev,train")


@pytest.fixture(scope="session")
def tokenizer() -> Any:
    """SmolLM2's tokenizer, read from the demo GGUF (fetched into the cache on first use)."""
    from transformers import AutoTokenizer

    from agentbolt.engine import demo_model_path

    path = demo_model_path()
    return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
