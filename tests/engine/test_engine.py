"""The engine on a tiny random model: batching, sampling parameters, logprobs, seeds, hot-swap."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from agentbolt.engine import Engine, tiny_random_model
from agentbolt.errors import BadInput
from agentbolt.gateway.text import TokenText
from agentbolt.types import GenerationRequest

PROMPTS = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "What is the capital of France? Answer in one word."}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Count to five."}],
    [{"role": "user", "content": "Write a haiku about batching requests on a small CPU."}],
]


@pytest.fixture
def engine(tokenizer: Any) -> Iterator[Engine]:
    with Engine(tiny_random_model(tokenizer), tokenizer, device="cpu") as eng:
        yield eng


def prompts(engine: Engine) -> list[list[int]]:
    """The chats rendered to prompt ids the way the gateway renders them (the tokenizer's chat template)."""
    text = TokenText(engine.tokenizer)
    return [text.chat_prompt(p) for p in PROMPTS]


async def test_batched_greedy_matches_one_at_a_time(engine: Engine) -> None:
    requests = [GenerationRequest(prompt_token_ids=p, max_new_tokens=12, temperature=0) for p in prompts(engine)]
    alone = [await engine.generate(r) for r in requests]
    together = await asyncio.gather(*(engine.generate(r) for r in requests))
    assert [r.timings.batch_size for r in alone] == [1] * len(requests)
    assert all(r.timings.batch_size == len(requests) for r in together)
    assert [r.response_token_ids for r in together] == [r.response_token_ids for r in alone]
    for a, b in zip(alone, together, strict=True):
        assert b.logprobs == pytest.approx(a.logprobs, abs=1e-4)


async def test_max_new_tokens_and_stop_ids_are_per_request(engine: Engine) -> None:
    p = prompts(engine)
    free = await engine.generate(GenerationRequest(prompt_token_ids=p[0], max_new_tokens=10, temperature=0))
    assert free.finish_reason == "length" and len(free.response_token_ids) == 10
    tokens = free.response_token_ids
    cut = next(i for i in range(2, len(tokens)) if tokens[i] not in tokens[:i])
    stopped, short, long = await asyncio.gather(
        engine.generate(
            GenerationRequest(prompt_token_ids=p[0], max_new_tokens=10, temperature=0, stop_token_ids=[tokens[cut]])
        ),
        engine.generate(GenerationRequest(prompt_token_ids=p[1], max_new_tokens=3, temperature=0)),
        engine.generate(GenerationRequest(prompt_token_ids=p[2], max_new_tokens=7, temperature=0)),
    )
    assert stopped.finish_reason == "stop"
    assert stopped.response_token_ids == tokens[: cut + 1]  # the stop token is kept, last
    assert (short.finish_reason, len(short.response_token_ids)) == ("length", 3)
    assert (long.finish_reason, len(long.response_token_ids)) == ("length", 7)


def recomputed_logprobs(engine: Engine, prompt: list[int], response: list[int], temperature: float) -> list[float]:
    """Logprobs of ``response`` from one plain forward pass over prompt + response, as a trainer computes them."""
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logits = engine.model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float()
    logp = torch.log_softmax(logits / (temperature or 1.0), dim=-1)
    return logp.gather(-1, torch.tensor(response)[:, None])[:, 0].tolist()


async def test_logprobs_match_a_separate_forward_pass(engine: Engine) -> None:
    p = prompts(engine)
    temps = [0.0, 0.7, 1.0, 1.3]
    results = await asyncio.gather(
        *(
            engine.generate(
                GenerationRequest(prompt_token_ids=prompt, max_new_tokens=16, temperature=t, top_p=0.9, seed=i)
            )
            for i, (prompt, t) in enumerate(zip(p, temps, strict=True))
        )
    )
    for prompt, t, res in zip(p, temps, results, strict=True):
        assert res.timings.batch_size == len(p)  # left-padded together, yet the logprobs are the model's
        assert len(res.logprobs) == len(res.response_token_ids)
        expected = recomputed_logprobs(engine, prompt, res.response_token_ids, t)
        assert res.logprobs == pytest.approx(expected, abs=1e-4)


async def test_top_logprobs_lists_the_best_alternatives(engine: Engine) -> None:
    prompt = prompts(engine)[1]
    res = await engine.generate(
        GenerationRequest(prompt_token_ids=prompt, max_new_tokens=5, temperature=0, top_logprobs=3)
    )
    assert res.top_logprobs is not None and len(res.top_logprobs) == 5
    for chosen, logprob, alternatives in zip(res.response_token_ids, res.logprobs, res.top_logprobs, strict=True):
        assert len(alternatives) == 3
        assert alternatives[0].token_id == chosen  # greedy picks the most likely token
        assert alternatives[0].logprob == pytest.approx(logprob)
        assert alternatives[0].logprob >= alternatives[1].logprob >= alternatives[2].logprob


async def test_seed_makes_sampling_reproducible(engine: Engine) -> None:
    p = prompts(engine)

    def request(seed: int) -> GenerationRequest:
        return GenerationRequest(prompt_token_ids=p[3], max_new_tokens=12, temperature=1.0, seed=seed)

    first = await engine.generate(request(7))
    # Same seed inside a batch with other requests: the same tokens.
    again, other, *_ = await asyncio.gather(
        engine.generate(request(7)),
        engine.generate(request(8)),
        *(engine.generate(GenerationRequest(prompt_token_ids=q, max_new_tokens=4)) for q in p[:2]),
    )
    assert again.response_token_ids == first.response_token_ids
    assert other.response_token_ids != first.response_token_ids


async def test_update_weights_hot_swaps_between_requests(engine: Engine, tokenizer: Any) -> None:
    prompt = prompts(engine)[1]
    request = GenerationRequest(prompt_token_ids=prompt, max_new_tokens=8, temperature=0)
    before = await engine.generate(request)
    assert before.model_version == 0

    new_weights = tiny_random_model(tokenizer, seed=1).state_dict()
    in_flight = asyncio.create_task(engine.generate(request))
    await asyncio.sleep(0)  # queued before the update: runs on version 0
    applied = engine.update_weights(new_weights, version=1)
    after = await engine.generate(request)

    assert (await in_flight).model_version == 0
    assert (await in_flight).response_token_ids == before.response_token_ids
    assert applied.result(timeout=10) == 1 and engine.model_version == 1
    assert after.model_version == 1
    assert after.response_token_ids != before.response_token_ids
    assert after.logprobs == pytest.approx(recomputed_logprobs(engine, prompt, after.response_token_ids, 0), abs=1e-4)


def test_update_weights_rejects_a_mismatched_state_dict(engine: Engine) -> None:
    with pytest.raises(BadInput, match="missing"):
        engine.update_weights({"model.norm.weight": torch.ones(64)}, version=1)


async def test_context_overflow_and_unknown_token_ids_are_bad_input(engine: Engine) -> None:
    assert engine.max_context == 2048
    with pytest.raises(BadInput, match="context length of 2048"):
        await engine.generate(GenerationRequest(prompt_token_ids=[1] * 2036, max_new_tokens=13))
    with pytest.raises(BadInput, match="outside the vocabulary"):
        await engine.generate(GenerationRequest(prompt_token_ids=[1, engine.vocab_size]))
    ok = await engine.generate(GenerationRequest(prompt_token_ids=[1] * 2036, max_new_tokens=12, temperature=0))
    assert len(ok.response_token_ids) <= 12


@pytest.mark.parametrize(
    ("params", "match"),
    [({"seed": 2**64}, "seed"), ({"seed": -(2**63) - 1}, "seed"), ({"temperature": 1e-50}, "temperature")],
)
async def test_sampling_parameters_the_engine_cannot_take_are_bad_input(
    engine: Engine, params: dict[str, Any], match: str
) -> None:
    with pytest.raises(BadInput, match=match):
        await engine.generate(GenerationRequest(prompt_token_ids=[1, 2, 3], max_new_tokens=2, **params))


async def test_a_request_that_fails_in_its_batch_fails_alone(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    from agentbolt.engine.engine import GenerationFailed

    # Past the checks (as a bug would let it), a seed torch cannot take raises inside the batch.
    monkeypatch.setattr(engine, "check_request", lambda request: None)
    engine.batch_wait_s = 0.2  # all nine in one batch
    good = [GenerationRequest(prompt_token_ids=p, max_new_tokens=4, temperature=0) for p in prompts(engine)] * 2
    bad = GenerationRequest(prompt_token_ids=[1, 2, 3], max_new_tokens=4, seed=2**64)
    outcomes = await asyncio.gather(*(engine.generate(r) for r in [*good[:4], bad, *good[4:]]), return_exceptions=True)
    assert isinstance(outcomes[4], GenerationFailed)
    rest = [o for i, o in enumerate(outcomes) if i != 4]
    assert all(not isinstance(o, BaseException) and len(o.response_token_ids) >= 1 for o in rest), rest
