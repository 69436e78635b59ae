"""Rows decoded together: one KV cache, attention mask and next positions for a set of sequences.

A :class:`Batch` starts with :func:`prefill` of left-padded prompts; each :meth:`Batch.step` feeds every
row its last sampled token. Rows leave as they finish (:meth:`Batch.keep`), and a batch prefilled later
can join a running one (:meth:`Batch.merge`). Every row is right-aligned: padding, then its prompt and
response, ending at the newest column. So joining left-pads the narrower side's keys and values along the
sequence axis; the attention mask hides the padding, and positions are counted per row, so each row
attends to exactly its own tokens at its own positions. Leading columns no remaining row uses are cut
off, so a batch that keeps taking new rows does not keep growing.

Only a cache whose layers are all plain ``DynamicLayer`` (full attention, the usual case) can be joined
or cut this way; sliding-window or linear-attention layers hold a different layout (:attr:`Batch.joinable`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from agentbolt.types import GenerationRequest, GenerationResult, TokenLogprob

# (input ids, attention mask, position ids, cache or None) -> (last position's logits (rows, vocab), cache)
Forward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Any], tuple[torch.Tensor, Any]]


@dataclass
class Job:
    """A queued request and where its result goes."""

    request: GenerationRequest
    future: asyncio.Future[GenerationResult]
    loop: asyncio.AbstractEventLoop
    submitted: float = field(default_factory=time.monotonic)
    answered: bool = False  # its result or error was handed to its loop


@dataclass
class Sequence:
    """Decoding state of one request inside a batch."""

    job: Job
    generator: torch.Generator | None
    stop_ids: frozenset[int]
    admitted: float  # when its prefill started
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top: list[list[TokenLogprob]] = field(default_factory=list)
    finish_reason: str | None = None
    finished_at: float = 0.0
    batch_size: int = 0  # most sequences decoded together while it ran

    def finished(self, now: float) -> bool:
        """Whether the token just added ends it (a stop id, its length limit, or its caller gone)."""
        if self.tokens[-1] in self.stop_ids:
            self.finish_reason = "stop"
        elif len(self.tokens) >= self.job.request.max_new_tokens or self.job.future.cancelled():
            self.finish_reason = "length"
        else:
            return False
        self.finished_at = now
        return True


class Batch:
    """The sequences decoded together and their shared KV cache; row ``i`` of every tensor is ``seqs[i]``."""

    def __init__(self, seqs: list[Sequence], cache: Any, mask: torch.Tensor, next_pos: torch.Tensor) -> None:
        self.seqs = seqs
        self.cache = cache
        self.mask = mask  # (rows, width): 1 on each row's own tokens, which end at the last column
        self.next_pos = next_pos  # (rows,): position of each row's next token
        self.tokens = next_pos.new_zeros(len(seqs))  # (rows,): each row's last sampled token, fed by step()
        self.joinable = _plain_dynamic(cache)

    def step(self, forward: Forward) -> torch.Tensor:
        """Feed every row its last sampled token; returns the next logits, (rows, vocab)."""
        self.mask = torch.cat([self.mask, self.mask.new_ones((len(self.seqs), 1))], dim=1)
        logits, self.cache = forward(self.tokens[:, None], self.mask, self.next_pos[:, None], self.cache)
        self.next_pos = self.next_pos + 1
        return logits

    def keep(self, rows: list[int], tokens: torch.Tensor) -> None:
        """Keep only ``rows`` (the unfinished ones), whose last sampled tokens are ``tokens[rows]``."""
        if len(rows) == len(self.seqs):
            self.tokens = tokens
            return
        self.seqs = [self.seqs[r] for r in rows]
        if not rows:
            return
        index = torch.tensor(rows, device=self.mask.device)
        self.cache.batch_select_indices(index)
        self.mask, self.next_pos, self.tokens = self.mask[index], self.next_pos[index], tokens[index]
        if self.joinable:
            self._cut_unused_columns()

    def merge(self, other: Batch) -> None:
        """Append ``other``'s rows (both :attr:`joinable`), left-padding the narrower cache to the wider one."""
        width = max(self.mask.shape[1], other.mask.shape[1])
        for mine, theirs in zip(self.cache.layers, other.cache.layers, strict=True):
            mine.keys = torch.cat([_pad_keys(mine.keys, width), _pad_keys(theirs.keys, width)])
            mine.values = torch.cat([_pad_keys(mine.values, width), _pad_keys(theirs.values, width)])
        self.mask = torch.cat([_pad_mask(self.mask, width), _pad_mask(other.mask, width)])
        self.next_pos = torch.cat([self.next_pos, other.next_pos])
        self.tokens = torch.cat([self.tokens, other.tokens])
        self.seqs = self.seqs + other.seqs

    def _cut_unused_columns(self) -> None:
        unused = self.mask.shape[1] - int(self.mask.sum(-1).max())  # padding left by rows that have finished
        if unused > 0:
            self.mask = self.mask[:, unused:]
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[..., unused:, :], layer.values[..., unused:, :]


def prefill(
    seqs: list[Sequence], forward: Forward, *, pad_token_id: int, device: torch.device, share_prefixes: bool
) -> tuple[Batch, torch.Tensor]:
    """Run the prompts of ``seqs`` through the model, left-padded to one length; returns the batch and its logits.

    With ``share_prefixes``, identical prompts are run once and their cache rows copied (a GRPO group sends
    ``group_size`` identical prompts together).
    """
    prompts = [tuple(s.job.request.prompt_token_ids) for s in seqs]
    distinct = list(dict.fromkeys(prompts)) if share_prefixes else prompts
    width = max(len(p) for p in distinct)
    ids = torch.full((len(distinct), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(distinct), width), dtype=torch.long)
    for row, prompt in enumerate(distinct):
        ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
        mask[row, width - len(prompt) :] = 1
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # positions count real tokens only
    logits, cache = forward(ids, mask, positions, None)
    if len(distinct) < len(prompts):
        where = {prompt: row for row, prompt in enumerate(distinct)}
        index = torch.tensor([where[p] for p in prompts], device=device)
        cache.batch_select_indices(index)
        mask, logits = mask[index], logits[index]
    return Batch(seqs, cache, mask, mask.sum(-1)), logits


def _plain_dynamic(cache: Any) -> bool:
    from transformers.cache_utils import DynamicLayer

    layers = getattr(cache, "layers", None) or []
    return bool(layers) and all(
        type(layer) is DynamicLayer and isinstance(layer.keys, torch.Tensor) and layer.keys.dim() == 4
        for layer in layers
    )


def _pad_keys(states: torch.Tensor, width: int) -> torch.Tensor:
    """(rows, heads, length, dim) keys or values, zero-padded on the left of the sequence axis to ``width``."""
    return F.pad(states, (0, 0, width - states.shape[-2], 0))


def _pad_mask(mask: torch.Tensor, width: int) -> torch.Tensor:
    return F.pad(mask, (width - mask.shape[-1], 0))
