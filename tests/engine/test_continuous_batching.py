"""Continuous batching on a tiny random model: requests joining a running batch, barriers, failures, shared prefixes.

Arrivals are placed at exact decode steps: the model's forward is wrapped so that, at its n-th call (on the
batch thread), requests are submitted on the test's event loop and the call waits until they are queued.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch

from agentbolt.engine import Engine, tiny_random_model
from agentbolt.engine.engine import GenerationFailed, Pause
from agentbolt.gateway.text import TokenText
from agentbolt.types import GenerationRequest, GenerationResult

CHATS = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "Write a haiku about batching requests on a small CPU, then explain it."}],
    [{"role": "user", "content": "Count to five."}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name three colours."}],
]


@pytest.fixture
def engine(tokenizer: Any) -> Iterator[Engine]:
    with Engine(tiny_random_model(tokenizer), tokenizer, device="cpu") as eng:
        yield eng


@pytest.fixture
def static_engine(tokenizer: Any) -> Iterator[Engine]:
    with Engine(tiny_random_model(tokenizer), tokenizer, device="cpu", continuous_batching=False) as eng:
        yield eng


def prompts(engine: Engine) -> list[list[int]]:
    text = TokenText(engine.tokenizer)
    return [text.chat_prompt(c) for c in CHATS]


def on_forward(engine: Engine, monkeypatch: pytest.MonkeyPatch, action: Callable[[int, dict[str, Any]], None]) -> None:
    """Call ``action(n, kwargs)`` on the batch thread before the model's n-th forward call (from 1)."""
    original = engine.model.forward
    calls = 0

    def forward(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        action(calls, kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(engine.model, "forward", forward)


async def with_arrivals(
    engine: Engine,
    monkeypatch: pytest.MonkeyPatch,
    first: GenerationRequest,
    arrivals: dict[int, list[GenerationRequest]],
) -> list[GenerationResult | BaseException]:
    """Submit ``first``; submit ``arrivals[n]`` during the model's n-th forward call. Outcomes in submission order."""
    loop = asyncio.get_running_loop()
    tasks: list[asyncio.Future[GenerationResult]] = []

    def submit(requests: list[GenerationRequest]) -> None:
        queued = threading.Event()

        async def put() -> None:
            tasks.extend(asyncio.ensure_future(engine.generate(r)) for r in requests)
            await asyncio.sleep(0)  # each generate() has put its request on the queue
            queued.set()

        asyncio.run_coroutine_threadsafe(put(), loop)
        assert queued.wait(timeout=30)

    on_forward(engine, monkeypatch, lambda n, _: submit(arrivals[n]) if n in arrivals else None)
    tasks.append(asyncio.ensure_future(engine.generate(first)))
    await asyncio.sleep(0)
    while not all(t.done() for t in tasks):  # tasks grows while the first one runs
        await asyncio.wait(tasks)
    return [t.exception() or t.result() for t in tasks]


def greedy(prompt: list[int], max_new_tokens: int = 24) -> GenerationRequest:
    return GenerationRequest(prompt_token_ids=prompt, max_new_tokens=max_new_tokens, temperature=0)


def sampled(prompt: list[int], seed: int) -> GenerationRequest:
    return GenerationRequest(prompt_token_ids=prompt, max_new_tokens=16, temperature=1.0, top_p=0.9, seed=seed)


def results(outcomes: list[GenerationResult | BaseException]) -> list[GenerationResult]:
    assert all(isinstance(o, GenerationResult) for o in outcomes), outcomes
    return [o for o in outcomes if isinstance(o, GenerationResult)]


def assert_same_outputs(got: list[GenerationResult], expected: list[GenerationResult]) -> None:
    assert [r.response_token_ids for r in got] == [r.response_token_ids for r in expected]
    for a, b in zip(got, expected, strict=True):
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)


async def test_requests_joining_a_running_batch_match_each_decoded_alone(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = prompts(engine)
    first = greedy(p[0])
    # A longer prompt than the running rows (their side is padded) and shorter ones (the newcomers' side is).
    later = {3: [greedy(p[1], 10)], 6: [greedy(p[2], 30), greedy(p[3], 12)], 9: [greedy(p[0], 8)]}
    alone = [await engine.generate(r) for r in [first, *(r for n in sorted(later) for r in later[n])]]
    assert len(alone[0].response_token_ids) == 24  # runs long enough for every arrival to join it

    together = results(await with_arrivals(engine, monkeypatch, first, later))

    assert_same_outputs(together, alone)
    assert [r.timings.batch_size for r in together] == [5] * 5  # all four joined the first request's batch


async def test_static_batching_makes_arrivals_wait_for_the_running_batch(
    static_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = prompts(static_engine)
    first, later = greedy(p[0]), {3: [greedy(p[1], 10)], 6: [greedy(p[2], 30)]}
    alone = [await static_engine.generate(r) for r in [first, later[3][0], later[6][0]]]

    together = results(await with_arrivals(static_engine, monkeypatch, first, later))

    assert_same_outputs(together, alone)
    assert [r.timings.batch_size for r in together] == [1, 2, 2]  # the two arrivals ran together, after it


async def test_seeded_sampling_does_not_depend_on_when_a_request_joins(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = prompts(engine)
    first = sampled(p[0], seed=1)
    later = {2: [sampled(p[1], seed=2), sampled(p[1], seed=3)], 7: [sampled(p[3], seed=4), greedy(p[2], 6)]}
    alone = [await engine.generate(r) for r in [first, *later[2], *later[7]]]

    together = results(await with_arrivals(engine, monkeypatch, first, later))

    assert_same_outputs(together, alone)
    assert together[1].response_token_ids != together[2].response_token_ids  # their own generators
    assert together[0].timings.batch_size > 1


async def test_a_weight_update_stops_admission_until_the_running_batch_is_done(
    engine: Engine, monkeypatch: pytest.MonkeyPatch, tokenizer: Any
) -> None:
    p = prompts(engine)
    first, before, after = greedy(p[0]), greedy(p[1], 8), greedy(p[2], 8)
    expected_before = await engine.generate(before)
    loop = asyncio.get_running_loop()
    tasks: list[asyncio.Future[GenerationResult]] = []
    update: list[Any] = []
    new_weights = tiny_random_model(tokenizer, seed=1).state_dict()

    def queue_update_between(n: int, _: dict[str, Any]) -> None:
        if n != 3:
            return
        queued = threading.Event()

        async def put() -> None:  # a request, the update, a request: in this order on the queue
            tasks.append(asyncio.ensure_future(engine.generate(before)))
            await asyncio.sleep(0)
            update.append(engine.update_weights(new_weights, version=1))
            tasks.append(asyncio.ensure_future(engine.generate(after)))
            await asyncio.sleep(0)
            queued.set()

        asyncio.run_coroutine_threadsafe(put(), loop)
        assert queued.wait(timeout=30)

    on_forward(engine, monkeypatch, queue_update_between)
    running = await engine.generate(first)
    got_before, got_after = await asyncio.gather(*tasks)

    assert update[0].result(timeout=10) == 1
    assert (running.model_version, got_before.model_version, got_after.model_version) == (0, 0, 1)
    assert running.timings.batch_size == 2 and got_before.timings.batch_size == 2  # it joined on the old weights
    assert got_after.timings.batch_size == 1  # it did not join the batch of the old version
    assert got_before.response_token_ids == expected_before.response_token_ids
    ids = torch.tensor([p[2] + got_after.response_token_ids])
    with torch.no_grad():
        logits = engine.model(input_ids=ids).logits[0, len(p[2]) - 1 : -1]
    assert got_after.response_token_ids == logits.argmax(-1).tolist()  # decoded by the new weights


async def test_a_pause_is_held_only_after_the_batch_it_interrupts_has_finished(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = prompts(engine)
    first, joined, waiting = greedy(p[0]), greedy(p[1], 8), greedy(p[2], 8)
    loop = asyncio.get_running_loop()
    tasks: list[asyncio.Future[GenerationResult]] = []
    holds: list[Pause] = []
    done_when_held: list[list[bool]] = []
    pause_queued, held = threading.Event(), threading.Event()
    put = engine._queue.put

    def put_and_tell(item: Any) -> None:  # the pause must be on the queue before the next request is
        put(item)
        if isinstance(item, Pause):
            pause_queued.set()

    monkeypatch.setattr(engine._queue, "put", put_and_tell)

    def pause() -> None:  # the trainer's side: returns once the batch thread is held
        holds.append(engine.pause())
        done_when_held.append([t.done() for t in tasks])
        held.set()

    def queue_pause_between(n: int, _: dict[str, Any]) -> None:
        if n != 3:
            return
        queued = threading.Event()

        async def submit() -> None:  # a request, the pause, a request: in this order on the queue
            tasks.append(asyncio.ensure_future(engine.generate(joined)))
            await asyncio.sleep(0)
            threading.Thread(target=pause).start()
            await asyncio.to_thread(pause_queued.wait, 30)
            tasks.append(asyncio.ensure_future(engine.generate(waiting)))
            await asyncio.sleep(0)
            queued.set()

        asyncio.run_coroutine_threadsafe(submit(), loop)
        assert queued.wait(timeout=30)

    on_forward(engine, monkeypatch, queue_pause_between)
    running = await engine.generate(first)
    got_joined = await tasks[0]
    assert await asyncio.to_thread(held.wait, 30)
    assert not tasks[1].done()  # held: the request queued after the pause waits
    with torch.no_grad():
        for param in engine.model.parameters():
            param.mul_(0.5)  # the trainer changes the weights in place
    engine.resume(holds[0], version=1)
    got_waiting = await tasks[1]

    assert done_when_held == [[True, False]]  # the request queued before the pause was answered before the hold
    assert (running.model_version, got_joined.model_version, got_waiting.model_version) == (0, 0, 1)
    assert running.timings.batch_size == 2 and got_waiting.timings.batch_size == 1


async def test_a_request_that_breaks_a_running_batch_fails_alone(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = prompts(engine)
    poison = GenerationRequest(prompt_token_ids=[1] * 300, max_new_tokens=8, temperature=0)
    first, others = greedy(p[0]), [greedy(p[1], 12), greedy(p[2], 12)]
    alone = [await engine.generate(r) for r in [first, *others]]

    def break_past_position_302(n: int, kwargs: dict[str, Any]) -> None:
        if n in arrivals:
            submit(arrivals[n])
        if kwargs["input_ids"].shape[1] == 1 and int(kwargs["position_ids"].max()) > 302:
            raise RuntimeError("boom")  # only the poison request reaches such positions, two steps in

    arrivals = {3: [others[0], poison], 5: [others[1]]}
    loop = asyncio.get_running_loop()
    tasks: list[asyncio.Future[GenerationResult]] = []

    def submit(requests: list[GenerationRequest]) -> None:
        queued = threading.Event()

        async def put() -> None:
            tasks.extend(asyncio.ensure_future(engine.generate(r)) for r in requests)
            await asyncio.sleep(0)
            queued.set()

        asyncio.run_coroutine_threadsafe(put(), loop)
        assert queued.wait(timeout=30)

    on_forward(engine, monkeypatch, break_past_position_302)
    got_first = await engine.generate(first)
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)

    assert isinstance(outcomes[1], GenerationFailed) and "boom" in str(outcomes[1])
    assert_same_outputs(results([got_first, outcomes[0], outcomes[2]]), alone)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
async def test_prefix_shared_rows_equal_unshared_ones(
    tokenizer: Any, monkeypatch: pytest.MonkeyPatch, temperature: float
) -> None:
    def group_requests(engine: Engine) -> list[GenerationRequest]:
        p = prompts(engine)
        return [
            GenerationRequest(prompt_token_ids=p[g], max_new_tokens=12, temperature=temperature, seed=10 * g + i)
            for g in (1, 3)
            for i in range(4)
        ]

    outputs: dict[bool, list[GenerationResult]] = {}
    prefill_rows: dict[bool, list[int]] = {}
    for share in (True, False):
        with Engine(tiny_random_model(tokenizer), tokenizer, device="cpu", prefix_sharing=share) as engine:
            engine.batch_wait_s = 0.5  # all eight in one batch
            prefill_rows[share] = rows = []

            def count_prefill_rows(n: int, kwargs: dict[str, Any], rows: list[int] = rows) -> None:
                if n == 1:
                    rows.append(kwargs["input_ids"].shape[0])

            on_forward(engine, monkeypatch, count_prefill_rows)
            outputs[share] = list(await asyncio.gather(*(engine.generate(r) for r in group_requests(engine))))

    assert prefill_rows == {True: [2], False: [8]}  # two groups: two prompts prefilled
    assert_same_outputs(outputs[True], outputs[False])
    assert all(r.timings.batch_size == 8 for r in outputs[True])
    if temperature:
        assert len({tuple(r.response_token_ids) for r in outputs[True]}) > 2  # each row its own draw
