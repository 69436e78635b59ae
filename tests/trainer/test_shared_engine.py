"""One copy of the weights: the engine decodes with the trainer's own model, paused around each update."""

from __future__ import annotations

import asyncio
import copy
import threading
from typing import Any

import pytest

torch = pytest.importorskip("torch", reason="the trainer needs the train extra: bash scripts/setup.sh dev,train")

from agentbolt.engine import Engine, tiny_random_model  # noqa: E402
from agentbolt.errors import BadInput  # noqa: E402
from agentbolt.trainer.trainer import Trainer  # noqa: E402
from agentbolt.types import GenerationRequest, LoraSettings, LossConfig, TrainerConfig  # noqa: E402
from tests.trainer.test_trainer import ADVANTAGES, SHAPES, make_samples  # noqa: E402


def greedy(engine: Engine, prompt: list[int], n: int = 6) -> Any:
    return asyncio.run(engine.generate(GenerationRequest(prompt_token_ids=prompt, max_new_tokens=n, temperature=0)))


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_a_shared_engine_serves_each_update_exactly_like_an_engine_sent_copies(tokenizer: Any, lora: bool) -> None:
    config = TrainerConfig(lr=5e-2, lora=LoraSettings(r=4, alpha=8) if lora else None)
    base = tiny_random_model(tokenizer)
    copied_engine = Engine(copy.deepcopy(base), tokenizer, device="cpu")
    copied = Trainer(copy.deepcopy(base), tokenizer, config, LossConfig(), engine=copied_engine)
    shared = Trainer(copy.deepcopy(base), tokenizer, config, LossConfig())
    shared_engine = Engine(shared.model, tokenizer, device="cpu", shared=True)
    shared.serve_with(shared_engine)
    samples = make_samples(base, len(tokenizer), SHAPES, ADVANTAGES)
    prompt = samples[0].prompt_token_ids
    try:
        assert greedy(shared_engine, prompt).response_token_ids == greedy(copied_engine, prompt).response_token_ids
        for _ in range(2):
            copied.step(samples)
            shared.step(samples)

        a, b = greedy(copied_engine, prompt), greedy(shared_engine, prompt)
        assert shared_engine.model is shared.model  # no second copy of the weights
        assert a.model_version == b.model_version == 2 == shared.model_version == shared_engine.model_version
        assert a.response_token_ids == b.response_token_ids
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)  # LoRA: merged weights vs the adapter applied
        assert greedy(shared_engine, prompt).response_token_ids != greedy_before(base, tokenizer, prompt)
    finally:
        copied_engine.close()
        shared_engine.close()


def greedy_before(model: Any, tokenizer: Any, prompt: list[int]) -> list[int]:
    with Engine(copy.deepcopy(model), tokenizer, device="cpu") as engine:
        return greedy(engine, prompt).response_token_ids


def test_pause_lets_the_running_batch_finish_and_holds_new_requests_until_resume(tokenizer: Any) -> None:
    model = tiny_random_model(tokenizer)
    engine = Engine(model, tokenizer, device="cpu", shared=True)
    prompt = [5, 6, 7, 8]
    results: dict[str, Any] = {}

    def call(name: str, n: int) -> None:
        results[name] = greedy(engine, prompt, n)

    decoding = threading.Event()
    decode = engine._decode

    def observed(jobs: Any, *, admit: bool) -> Any:
        decoding.set()
        return decode(jobs, admit=admit)

    engine._decode = observed  # type: ignore[method-assign]
    try:
        running = threading.Thread(target=call, args=("running", 64))
        running.start()
        assert decoding.wait(timeout=30)  # the batch thread is decoding it
        hold = engine.pause()  # returns once the running batch is done
        running.join(timeout=30)
        assert results["running"].model_version == 0 and len(results["running"].response_token_ids) == 64

        waiting = threading.Thread(target=call, args=("waiting", 4))
        waiting.start()
        waiting.join(timeout=0.5)
        assert waiting.is_alive() and "waiting" not in results  # held while paused
        with torch.no_grad():  # the "update": the weights change in place
            for p in model.parameters():
                p.add_(0.01)
        engine.resume(hold, 7)
        waiting.join(timeout=30)
        assert results["waiting"].model_version == 7 and engine.model_version == 7
    finally:
        engine.close()


def test_a_trainer_refuses_an_engine_that_holds_its_model_without_sharing_it(tokenizer: Any) -> None:
    model = tiny_random_model(tokenizer)
    with Engine(model, tokenizer, device="cpu") as engine, pytest.raises(BadInput, match="shared=True"):
        Trainer(model, tokenizer, TrainerConfig(), LossConfig(), engine=engine)


def test_engine_dtype_casts_its_own_copy_and_autocasts_a_shared_model(tokenizer: Any) -> None:
    own = Engine(tiny_random_model(tokenizer), tokenizer, device="cpu", dtype="bfloat16")
    shared_model = tiny_random_model(tokenizer)
    shared = Engine(shared_model, tokenizer, device="cpu", dtype="bfloat16", shared=True)
    try:
        assert {p.dtype for p in own.model.parameters()} == {torch.bfloat16}
        assert {p.dtype for p in shared_model.parameters()} == {torch.float32}  # the trainer's weights stay fp32
        assert shared.autocast_dtype == torch.bfloat16
        assert len(greedy(shared, [5, 6, 7]).response_token_ids) == 6
    finally:
        own.close()
        shared.close()
    with pytest.raises(BadInput, match="unknown dtype"):
        Engine(tiny_random_model(tokenizer), tokenizer, device="cpu", dtype="int3")


def test_lora_in_bf16_stores_the_frozen_base_in_bf16_and_trains_the_adapter_in_fp32(tokenizer: Any) -> None:
    config = TrainerConfig(lr=5e-2, dtype="bfloat16", lora=LoraSettings(r=4, alpha=8))
    trainer = Trainer(tiny_random_model(tokenizer), tokenizer, config, LossConfig())
    frozen = {p.dtype for p in trainer.model.parameters() if not p.requires_grad}
    trained = {p.dtype for p in trainer.model.parameters() if p.requires_grad}
    assert frozen == {torch.bfloat16} and trained == {torch.float32}
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    samples = make_samples(tiny_random_model(tokenizer), len(tokenizer), SHAPES, ADVANTAGES)

    metrics = trainer.step(samples)

    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values())
    moved = [n for n, p in trainer.model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert moved  # the adapter trained
    with Engine(trainer.model, tokenizer, device="cpu", shared=True) as engine:
        trainer.serve_with(engine)
        assert len(greedy(engine, samples[0].prompt_token_ids).response_token_ids) == 6
