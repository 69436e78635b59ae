"""Fixtures of the trainer tests: the demo model's tokenizer (tiny random models are built over it)."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture(scope="session")
def tokenizer() -> Any:
    """SmolLM2's tokenizer, read from the demo GGUF (fetched into the cache on first use)."""
    pytest.importorskip("torch", reason="the trainer needs the train extra: bash scripts/setup.sh dev,train")
    from transformers import AutoTokenizer

    from agentbolt.engine import demo_model_path

    path = demo_model_path()
    return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
