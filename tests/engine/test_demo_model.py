"""The real demo model (SmolLM2-135M-Instruct from its GGUF): chat replies and a saveable checkpoint."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from agentbolt.engine import Engine, load_tokenizer_and_model, save_checkpoint
from agentbolt.gateway.text import TokenText
from agentbolt.types import GenerationRequest


@pytest.fixture(scope="module")
def demo() -> Iterator[Engine]:
    with Engine.load("demo", device="cpu") as engine:
        yield engine


def chat_prompt(engine: Engine, question: str) -> list[int]:
    """Prompt ids of one user message, rendered the way the gateway renders chats."""
    return TokenText(engine.tokenizer).chat_prompt([{"role": "user", "content": question}])


async def test_demo_model_answers_a_chat_message(demo: Engine) -> None:
    prompt = chat_prompt(demo, "What is the capital of France?")
    result = await demo.generate(GenerationRequest(prompt_token_ids=prompt, max_new_tokens=12, temperature=0))
    text = demo.tokenizer.decode(result.response_token_ids, skip_special_tokens=True)
    assert text.strip()
    assert "Paris" in text
    assert result.model_version == 0 and len(result.logprobs) == len(result.response_token_ids)


def test_gguf_model_saves_as_a_plain_checkpoint(demo: Engine, tmp_path: Path) -> None:
    save_checkpoint(demo.model, demo.tokenizer, tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    _, reloaded = load_tokenizer_and_model(str(tmp_path))
    ids = torch.tensor([chat_prompt(demo, "Hi")])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, demo.model(input_ids=ids).logits)
