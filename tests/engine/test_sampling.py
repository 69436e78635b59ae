"""The vectorised sampler picks exactly what one torch.multinomial call per row picks, batch or no batch."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import torch

from agentbolt.engine.batch import Job, Sequence
from agentbolt.engine.sampling import sample
from agentbolt.types import GenerationRequest, TokenLogprob

VOCAB = 4096


def reference_sample(logits: torch.Tensor, seqs: list[Sequence]) -> list[tuple[int, float, list[TokenLogprob]]]:
    """One row at a time, one torch.multinomial call per row: the engine's sampling before it was vectorised,
    except that a nucleus is now cut in vocabulary order (see agentbolt/engine/sampling.py)."""
    temps = torch.tensor([s.job.request.temperature or 1.0 for s in seqs], dtype=logits.dtype)
    logp = torch.log_softmax(logits / temps[:, None], dim=-1)
    picked = []
    for row, seq in enumerate(seqs):
        req = seq.job.request
        if req.temperature == 0:
            token = int(torch.argmax(logits[row]))
        else:
            probs = logp[row].exp()
            if req.top_p < 1.0:
                sorted_probs, order = torch.sort(probs, descending=True)
                outside = sorted_probs.cumsum(-1) - sorted_probs >= req.top_p
                probs[order[outside]] = 0.0
            token = int(torch.multinomial(probs, 1, generator=seq.generator))
        top = []
        if req.top_logprobs:
            values, ids = torch.topk(logp[row], req.top_logprobs)
            top = [TokenLogprob(token_id=int(t), logprob=float(v)) for t, v in zip(ids, values, strict=True)]
        picked.append((token, float(logp[row, token]), top))
    return picked


def sequences(params: list[dict[str, Any]], loop: asyncio.AbstractEventLoop) -> list[Sequence]:
    seqs = []
    for i, p in enumerate(params):
        request = GenerationRequest(prompt_token_ids=[1], **p)
        generator = None if request.temperature == 0 else torch.Generator().manual_seed(1000 + i)
        job = Job(request=request, future=loop.create_future(), loop=loop)
        seqs.append(Sequence(job=job, generator=generator, stop_ids=frozenset(), admitted=0.0))
    return seqs


ROWS = [
    {"temperature": 0.0},
    {"temperature": 1.0},
    {"temperature": 0.7, "top_p": 0.9, "top_logprobs": 3},
    {"temperature": 1.3, "top_p": 0.5},
    {"temperature": 0.0, "top_logprobs": 5},
    {"temperature": 1.0, "top_logprobs": 3},
    {"temperature": 2.0, "top_p": 0.95},
]


@pytest.mark.parametrize("step_seed", range(5))
async def test_vectorised_sampling_picks_what_row_by_row_sampling_picked(step_seed: int) -> None:
    loop = asyncio.get_running_loop()
    torch.manual_seed(step_seed)
    fast, slow = sequences(ROWS, loop), sequences(ROWS, loop)
    for step in range(8):  # several steps: each row's generator moves on identically
        logits = torch.randn(len(ROWS), VOCAB) * (4 if step % 2 else 1.5)  # peaked, then a wide nucleus
        if step % 4 == 1:
            logits[:, :50] = logits[:, :50].max()  # a block of exact ties among the most likely tokens
        tokens = sample(logits, fast)
        expected = reference_sample(logits, slow)
        assert tokens.tolist() == [t for t, _, _ in expected]
        for seq, (token, logprob, top) in zip(fast, expected, strict=True):
            assert (seq.tokens[-1], seq.logprobs[-1]) == (token, logprob)  # bit for bit
            assert (seq.top[-1] if top else []) == top
        for seq, (token, _, _) in zip(slow, expected, strict=True):
            seq.tokens.append(token)


async def test_sampling_a_row_with_nan_logits_raises() -> None:
    seqs = sequences([{"temperature": 0.0}, {"temperature": 1.0}], asyncio.get_running_loop())
    logits = torch.randn(2, VOCAB)
    logits[1, 7] = float("nan")
    with pytest.raises(RuntimeError, match="nan"):
        sample(logits, seqs)


async def test_seeded_picks_do_not_move_with_float_noise_in_the_logits() -> None:
    # Batch composition changes logits in the last bits (other padding, other matmul blocking).
    loop = asyncio.get_running_loop()
    params = [{"temperature": 1.0, "top_p": p} for p in (0.5, 0.8, 0.9, 0.95, 1.0)] * 8
    clean, noisy = sequences(params, loop), sequences(params, loop)
    torch.manual_seed(0)
    for _ in range(10):
        logits = torch.randn(len(params), 49152) * 0.5  # SmolLM2's vocabulary, flat: many near-equal probabilities
        sample(logits, clean)
        sample(logits + 1e-5 * torch.randn_like(logits), noisy)
    changed = sum(a.tokens != b.tokens for a, b in zip(clean, noisy, strict=True))
    assert changed <= 1, f"{changed} of {len(params)} seeded rows changed"  # a pick on the nucleus edge may
