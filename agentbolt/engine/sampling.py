"""The next token of every row of a batch, each row with its own sampling parameters, in a few tensor ops.

Greedy rows (temperature 0) take the argmax of the logits. Sampled rows draw from
``softmax(logits / temperature)``, with the tokens past the top-p nucleus zeroed when ``top_p < 1``, each
with its own ``torch.Generator``. A row's draw is what ``torch.multinomial(probs, 1, generator=g)`` picks,
computed the way torch computes it for one sample (argmax of ``probs / q``, ``q ~ Exp(1)`` drawn from
``g``): only the noise is drawn row by row (checked against multinomial in tests/engine/test_sampling.py).

The noise is paired with token ids, also for a nucleus (until issue 12 a nucleus was sampled in
probability-sorted order): near-equal probabilities swap places in that order under the float noise that
batch composition adds to the logits, which changed a seeded request's tokens depending on its batch. So
for ``top_p < 1`` a seed now gives other tokens than before; greedy and ``top_p == 1`` are unchanged.

The logprob recorded is ``log_softmax(logits / temperature)`` of the chosen token (``log_softmax(logits)``
when greedy): the distribution before top-p truncation, which a trainer can recompute from logits alone.
"""

from __future__ import annotations

import torch

from agentbolt.engine.batch import Sequence
from agentbolt.types import TokenLogprob


def sample(logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
    """Pick a token for each row of ``logits`` (rows, vocab); append it, its logprob and alternatives to its sequence.

    Returns the chosen tokens, (rows,), on the logits' device.

    Raises:
        RuntimeError: a sampled row's probabilities are not finite (as ``torch.multinomial`` raises).
    """
    requests = [s.job.request for s in seqs]
    temps = torch.tensor([r.temperature or 1.0 for r in requests], device=logits.device, dtype=logits.dtype)
    logp = torch.log_softmax(logits / temps[:, None], dim=-1)  # (rows, vocab)
    tokens = torch.argmax(logits, dim=-1)  # (rows,): the greedy rows' picks
    drawn = [row for row, r in enumerate(requests) if r.temperature != 0]
    if drawn:
        tokens[_rows(drawn, logits)] = _draw(logp, drawn, seqs)
    chosen = logp.gather(-1, tokens[:, None])[:, 0]  # (rows,)
    top = _top_logprobs(logp, [r.top_logprobs for r in requests])
    for seq, token, logprob, alternatives in zip(seqs, tokens.tolist(), chosen.tolist(), top, strict=True):
        seq.tokens.append(token)
        seq.logprobs.append(logprob)
        if alternatives is not None:
            seq.top.append(alternatives)
    return tokens


def _draw(logp: torch.Tensor, rows: list[int], seqs: list[Sequence]) -> torch.Tensor:
    """Sampled tokens of ``rows``, each from its sequence's generator."""
    probs = logp[_rows(rows, logp)].exp()  # (drawn, vocab)
    if not bool(torch.isfinite(probs).all()):
        raise RuntimeError("probability tensor contains either inf, nan or element < 0")
    top_p = [seqs[row].job.request.top_p for row in rows]
    nucleus = [i for i, p in enumerate(top_p) if p < 1.0]
    if nucleus:  # zero those rows' tokens past the nucleus, in vocabulary order
        index = _rows(nucleus, probs)
        sorted_probs, order = torch.sort(probs[index], descending=True)
        limit = torch.tensor([top_p[i] for i in nucleus], device=probs.device, dtype=probs.dtype)
        outside = sorted_probs.cumsum(-1) - sorted_probs >= limit[:, None]  # tokens after the nucleus is full
        probs[index] = probs[index].masked_fill(outside.scatter(-1, order, outside), 0.0)
    noise = torch.empty_like(probs)  # (drawn, vocab): Exp(1), one row per generator, paired with token ids
    for i, row in enumerate(rows):
        noise[i].exponential_(generator=seqs[row].generator)
    return torch.argmax(probs / noise, dim=-1)  # what torch.multinomial(probs, 1, generator) picks


def _top_logprobs(logp: torch.Tensor, counts: list[int]) -> list[list[TokenLogprob] | None]:
    """The ``counts[row]`` most likely tokens of each row that asks for any, best first (one topk per count)."""
    top: list[list[TokenLogprob] | None] = [None] * len(counts)
    for k in sorted({c for c in counts if c}):
        rows = [row for row, c in enumerate(counts) if c == k]
        values, ids = torch.topk(logp[_rows(rows, logp)], k)
        for row, row_values, row_ids in zip(rows, values.tolist(), ids.tolist(), strict=True):
            top[row] = [TokenLogprob(token_id=t, logprob=v) for t, v in zip(row_ids, row_values, strict=True)]
    return top


def _rows(rows: list[int], like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.long, device=like.device)
