"""The embedded trainer: policy updates, micro-batching, LoRA, weights to the engine, exact resume."""

from __future__ import annotations

import asyncio
import copy
import random
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch", reason="the trainer needs the train extra: bash scripts/setup.sh dev,train")

from agentbolt.engine import Engine, tiny_random_model  # noqa: E402
from agentbolt.errors import BadInput  # noqa: E402
from agentbolt.trainer.checkpoint import list_checkpoints  # noqa: E402
from agentbolt.trainer.trainer import Trainer, WeightSink  # noqa: E402
from agentbolt.types import GenerationRequest, LoraSettings, LossConfig, Sample, TrainerConfig  # noqa: E402


@torch.no_grad()
def response_logprobs(model: Any, prompt: list[int], response: list[int]) -> list[float]:
    """Log-probabilities of ``response`` after ``prompt`` under ``model`` (temperature 1), computed plainly."""
    ids = torch.tensor([[*prompt, *response]])
    logits = model(input_ids=ids).logits[0].float()  # (L, V)
    logp = torch.log_softmax(logits, dim=-1)
    return [float(logp[len(prompt) - 1 + k, token]) for k, token in enumerate(response)]


def make_samples(
    model: Any, vocab: int, shapes: list[tuple[int, int]], advantages: list[float], seed: int = 1
) -> list[Sample]:
    """On-policy samples (old logprobs from ``model`` itself) of the given (prompt, response) lengths."""
    rng = random.Random(seed)
    samples = []
    for i, ((p, r), advantage) in enumerate(zip(shapes, advantages, strict=True)):
        prompt = [rng.randrange(vocab) for _ in range(p)]
        response = [rng.randrange(vocab) for _ in range(r)]
        samples.append(
            Sample(
                rollout_id=f"r{i // 2}",
                attempt_id=f"a{i // 2}",
                group_id="g",
                transition_index=i % 2,
                prompt_token_ids=prompt,
                response_token_ids=response,
                old_logprobs=response_logprobs(model, prompt, response),
                advantage=advantage,
                return_value=advantage,
                model_version=0,
            )
        )
    return samples


SHAPES = [(7, 3), (12, 5), (4, 9), (20, 2), (9, 6), (15, 4)]
ADVANTAGES = [1.0, -0.5, 0.8, -1.2, 0.9, -0.4]


def trainable(trainer: Trainer) -> dict[str, Any]:
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}


def all_params(trainer: Trainer) -> dict[str, Any]:
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters()}


def test_positive_advantage_raises_its_response_logprob_and_negative_lowers_it(tokenizer: Any) -> None:
    model = tiny_random_model(tokenizer)
    samples = make_samples(model, len(tokenizer), [(10, 6), (8, 5)], [1.0, -1.0])
    trainer = Trainer(model, tokenizer, TrainerConfig(lr=1e-3), LossConfig(aggregation="seq_mean"))
    before = [sum(s.old_logprobs) for s in samples]

    metrics = trainer.step(samples)

    after = [sum(response_logprobs(trainer.model, s.prompt_token_ids, s.response_token_ids)) for s in samples]
    assert after[0] > before[0]
    assert after[1] < before[1]
    assert metrics["model_version"] == 1 and trainer.model_version == 1
    assert metrics["tokens"] == 10 + 6 + 8 + 5 and metrics["response_tokens"] == 11
    # On-policy: ratio 1, nothing clipped, no divergence from the behaviour policy.
    assert metrics["clip_fraction"] == 0.0
    assert abs(metrics["approx_kl"]) < 1e-6
    assert metrics["entropy"] > 0 and metrics["grad_norm"] > 0


@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean", "rollout_mean"])
def test_gradient_accumulation_over_micro_batches_equals_one_big_batch(tokenizer: Any, aggregation: str) -> None:
    # Adam with eps=1 and no momentum makes the first update lr * g / (|g| + 1) ~ lr * g: weights compare gradients.
    config = dict(lr=1.0, eps=1.0, betas=(0.0, 0.0), grad_clip=None)
    loss = LossConfig(aggregation=aggregation)  # type: ignore[arg-type]
    one = Trainer(tiny_random_model(tokenizer), tokenizer, TrainerConfig(micro_batch_tokens=10_000, **config), loss)
    many = Trainer(tiny_random_model(tokenizer), tokenizer, TrainerConfig(micro_batch_tokens=24, **config), loss)
    samples = make_samples(one.model, len(tokenizer), SHAPES, ADVANTAGES)
    start = all_params(one)

    m_one, m_many = one.step(samples), many.step(samples)

    assert m_one["micro_batches"] == 1 and m_many["micro_batches"] >= 4
    assert m_many["loss"] == pytest.approx(m_one["loss"], rel=1e-5, abs=1e-6) and abs(m_one["loss"]) > 1e-2
    assert m_many["grad_norm"] == pytest.approx(m_one["grad_norm"], rel=1e-4)
    a, b = all_params(one), all_params(many)
    update = max(float((a[n] - start[n]).abs().max()) for n in a)
    difference = max(float((b[n] - a[n]).abs().max()) for n in a)
    assert update > 1e-3
    assert difference < 1e-3 * update  # float summation order only


def test_lora_step_trains_only_the_adapter_and_the_engine_serves_the_merged_weights(tokenizer: Any) -> None:
    engine = Engine(tiny_random_model(tokenizer), tokenizer, device="cpu")
    versions: list[int] = []
    config = TrainerConfig(lr=5e-2, lora=LoraSettings(r=4, alpha=8))
    trainer = Trainer(tiny_random_model(tokenizer), tokenizer, config, LossConfig(), engine, versions.append)
    samples = make_samples(engine.model, len(tokenizer), SHAPES, ADVANTAGES)
    request = GenerationRequest(prompt_token_ids=samples[0].prompt_token_ids, max_new_tokens=4, temperature=0)
    before_engine = asyncio.run(engine.generate(request))
    frozen_before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if not p.requires_grad}
    adapter_before = trainable(trainer)
    try:
        metrics = trainer.step(samples)
        after_engine = asyncio.run(engine.generate(request))
    finally:
        engine.close()

    assert adapter_before and all(".lora_" in n for n in adapter_before)
    for name, value in trainer.model.named_parameters():
        if value.requires_grad:
            continue
        assert torch.equal(value, frozen_before[name]), f"{name} is frozen but changed"
    assert any(not torch.equal(v, adapter_before[n]) for n, v in trainable(trainer).items())

    assert metrics["model_version"] == 1 and versions == [1] and engine.model_version == 1
    assert before_engine.model_version == 0 and after_engine.model_version == 1
    assert after_engine.logprobs != before_engine.logprobs
    # The engine got base + scale * B @ A, the same as PEFT's own merge, and the adapter is still live.
    merged = copy.deepcopy(trainer.model).merge_and_unload().state_dict()
    served = engine.model.state_dict()
    for key in ("model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight"):
        torch.testing.assert_close(served[key], merged[key], rtol=0, atol=1e-6)
    assert not torch.equal(
        served["model.layers.0.self_attn.q_proj.weight"],
        frozen_before["base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight"],
    )
    assert hasattr(trainer.model.base_model.model.model.layers[0].self_attn.q_proj, "lora_A")


@pytest.mark.parametrize("lora", [None, LoraSettings(r=4, alpha=8, dropout=0.1)], ids=["full", "lora_dropout"])
def test_resume_continues_the_run_exactly(tokenizer: Any, tmp_path: Path, lora: LoraSettings | None) -> None:
    config = TrainerConfig(lr=1e-3, lora=lora, seed=3, mini_batches=2, checkpoint_dir=str(tmp_path / "ckpt"))
    vocab = len(tokenizer)
    first = Trainer(tiny_random_model(tokenizer), tokenizer, config, LossConfig())
    for seed in (1, 2):  # each batch on-policy, as fresh rollouts would be
        first.step(make_samples(first.model, vocab, SHAPES, ADVANTAGES, seed=seed))
    saved = first.save()
    last = make_samples(first.model, vocab, SHAPES, ADVANTAGES, seed=3)
    expected = first.step(last)
    expected_weights = all_params(first)

    # A fresh process would build the same trainer, then resume; other random draws happen in between.
    torch.manual_seed(1234)
    random.seed(1234)
    second = Trainer(tiny_random_model(tokenizer), tokenizer, config, LossConfig())
    state = second.resume(tmp_path / "ckpt")
    got = second.step(last)

    assert saved.name == "step-000002" and state.step == 2 and state.model_version == 2
    assert got["step"] == expected["step"] == 3 and got["model_version"] == 3
    assert expected["clip_fraction"] < 0.5  # the last step learns (the clip does not zero its gradient)
    assert got["loss"] == expected["loss"]
    weights = all_params(second)
    assert weights.keys() == expected_weights.keys()
    for name, value in expected_weights.items():
        assert torch.equal(weights[name], value), f"{name} differs after resume"


def test_checkpoints_keep_only_the_newest_and_resume_the_engine(tokenizer: Any, tmp_path: Path) -> None:
    config = TrainerConfig(lr=1e-2, keep_checkpoints=2)
    trainer = Trainer(tiny_random_model(tokenizer), tokenizer, config, LossConfig())
    samples = make_samples(trainer.model, len(tokenizer), SHAPES[:2], ADVANTAGES[:2])
    for _ in range(3):
        trainer.step(samples)
        trainer.save(tmp_path)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000002", "step-000003"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000002", "step-000003"]  # no temporaries left

    engine = Engine(tiny_random_model(tokenizer), tokenizer, device="cpu")
    try:
        fresh = Trainer(tiny_random_model(tokenizer), tokenizer, config, LossConfig(), engine)
        fresh.resume(tmp_path)
        assert fresh.model_version == 3 and engine.model_version == 3
        assert torch.equal(engine.model.state_dict()["model.norm.weight"], trainer.model.model.norm.weight)
    finally:
        engine.close()
    lora = Trainer(tiny_random_model(tokenizer), tokenizer, TrainerConfig(lora=LoraSettings()), LossConfig())
    with pytest.raises(BadInput, match="full weights"):
        lora.resume(tmp_path)


@pytest.mark.parametrize("lora", [None, LoraSettings(r=4, alpha=8)], ids=["full", "lora"])
def test_kl_penalty_measures_divergence_from_the_starting_policy(tokenizer: Any, lora: LoraSettings | None) -> None:
    trainer = Trainer(
        tiny_random_model(tokenizer), tokenizer, TrainerConfig(lr=5e-2, lora=lora), LossConfig(kl_coef=0.1)
    )
    samples = make_samples(trainer.model, len(tokenizer), SHAPES, ADVANTAGES)
    first = trainer.step(samples)
    second = trainer.step(samples)
    assert abs(first["kl_ref"]) < 1e-6  # the policy starts as the reference
    assert second["kl_ref"] > 1e-6


def test_version_lag_is_reported_per_batch(tokenizer: Any) -> None:
    trainer = Trainer(tiny_random_model(tokenizer), tokenizer, TrainerConfig(), LossConfig())
    samples = make_samples(trainer.model, len(tokenizer), SHAPES[:3], ADVANTAGES[:3])
    trainer.step(samples)
    trainer.step(samples)
    stale = [s.model_copy(update={"model_version": v}) for s, v in zip(samples, [0, 1, None], strict=True)]
    metrics = trainer.step(stale)
    assert metrics["version_lag_mean"] == 1.5 and metrics["version_lag_max"] == 2
    assert metrics["model_version"] == 3


def test_unusable_samples_are_refused_with_a_clear_message(tokenizer: Any) -> None:
    trainer = Trainer(tiny_random_model(tokenizer), tokenizer, TrainerConfig(), LossConfig())
    good = make_samples(trainer.model, len(tokenizer), SHAPES[:2], ADVANTAGES[:2])
    empty = good[1].model_copy(update={"response_token_ids": [], "old_logprobs": []})
    with pytest.raises(BadInput, match=r"sample 1 \(rollout r0, transition 1\) has an empty response"):
        trainer.step([good[0], empty])
    short = good[1].model_copy(update={"old_logprobs": good[1].old_logprobs[:-1]})
    with pytest.raises(BadInput, match="one per response token"):
        trainer.step([short])
    with pytest.raises(BadInput, match="batch is empty"):
        trainer.step([])
    assert trainer.steps_done == 0 and trainer.model_version == 0


def test_trainer_refuses_the_engines_own_model_object(tokenizer: Any) -> None:
    model = tiny_random_model(tokenizer)
    engine = Engine(model, tokenizer, device="cpu")
    with pytest.raises(BadInput, match="own copy"):
        Trainer(model, tokenizer, TrainerConfig(), LossConfig(), engine)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 1.5])
def test_samples_are_scored_at_the_temperature_the_engine_sampled_them_at(tokenizer: Any, temperature: float) -> None:
    model = tiny_random_model(tokenizer, seed=3)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True)
    prompt = list(prompt["input_ids"] if hasattr(prompt, "keys") else prompt)

    async def sample() -> Any:
        with Engine(copy.deepcopy(model), tokenizer, device="cpu") as engine:
            request = GenerationRequest(prompt_token_ids=prompt, max_new_tokens=8, temperature=temperature, seed=5)
            return await engine.generate(request)

    result = asyncio.run(sample())
    on_policy = Sample(
        rollout_id="r",
        attempt_id="a",
        transition_index=0,
        prompt_token_ids=prompt,
        response_token_ids=result.response_token_ids,
        old_logprobs=result.logprobs,
        temperature=temperature,
        advantage=1.0,
        return_value=1.0,
    )
    trainer = Trainer(model, tokenizer, TrainerConfig(lr=1e-3), LossConfig())
    metrics = trainer.step([on_policy])
    # The first update is exactly on-policy: the ratio is 1 only if the trainer scores at the sampling temperature.
    assert metrics["ratio_mean"] == pytest.approx(1.0, abs=1e-4)
    assert metrics["clip_fraction"] == 0.0


def test_constructing_and_stepping_a_trainer_leaves_the_global_random_state_alone(tokenizer: Any) -> None:
    config = TrainerConfig(lr=1e-3, seed=5, lora=LoraSettings(r=4, alpha=8, dropout=0.1))
    model = tiny_random_model(tokenizer)
    samples = make_samples(model, len(tokenizer), SHAPES[:2], ADVANTAGES[:2])
    torch.manual_seed(1234)
    random.seed(1234)
    expected_torch, expected_python = torch.rand(3), random.random()
    torch.manual_seed(1234)
    random.seed(1234)

    trainer = Trainer(model, tokenizer, config, LossConfig())
    trainer.step(samples)  # LoRA dropout draws random numbers: from the trainer's own streams

    assert torch.equal(torch.rand(3), expected_torch) and random.random() == expected_python
    # The trainer's own streams still make one seed one run: the same LoRA initialisation every time.
    again = Trainer(tiny_random_model(tokenizer), tokenizer, config, LossConfig())
    other = Trainer(tiny_random_model(tokenizer), tokenizer, config.model_copy(update={"seed": 6}), LossConfig())
    first = Trainer(tiny_random_model(tokenizer), tokenizer, config, LossConfig())
    assert all(torch.equal(v, trainable(again)[n]) for n, v in trainable(first).items())
    assert any(not torch.equal(v, trainable(other)[n]) for n, v in trainable(first).items())


class RecordingSink:
    """A weight sink that is not an engine: it keeps what it is sent."""

    def __init__(self) -> None:
        self.model_version = 0
        self.received: list[tuple[int, set[str]]] = []

    def update_weights(self, state_dict: Any, version: int) -> Any:
        import concurrent.futures

        self.received.append((version, set(state_dict)))
        self.model_version = version
        done: concurrent.futures.Future[int] = concurrent.futures.Future()
        done.set_result(version)
        return done


def test_any_weight_sink_gets_each_new_version_under_the_plain_models_names(tokenizer: Any) -> None:
    sink = RecordingSink()
    checked: WeightSink = sink  # the protocol is all the trainer needs
    config = TrainerConfig(lora=LoraSettings())
    trainer = Trainer(tiny_random_model(tokenizer), tokenizer, config, LossConfig(), checked)
    samples = make_samples(trainer.model, len(tokenizer), SHAPES[:2], ADVANTAGES[:2])
    trainer.step(samples)
    trainer.step(samples)
    plain = set(tiny_random_model(tokenizer).state_dict())
    assert [version for version, _ in sink.received] == [1, 2]
    assert all(names == plain for _, names in sink.received)
