"""Samples packed into micro-batches, and the log-probabilities a policy gives their response tokens.

:func:`pack_micro_batches` lays samples out as right-padded rows under a token budget;
:func:`token_logprobs` is the one place the trainer scores response tokens (for the policy and for the
frozen reference alike): forward, logits of the positions that predict response tokens, scaled by each
sample's temperature, log-softmax, gather.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
from dataclasses import dataclass
from typing import Any

import torch

from agentbolt.types import Sample


@dataclass
class MicroBatch:
    """Samples packed for one forward/backward pass (B rows, right-padded to length L).

    Position t of the ``(B, L-1)`` tensors is the prediction of token t+1 from the logits at t.
    """

    input_ids: torch.Tensor  # (B, L) prompt + response, right-padded
    attention_mask: torch.Tensor  # (B, L) 1 on real tokens
    response_mask: torch.Tensor  # (B, L-1) bool: position t predicts a response token
    targets: torch.Tensor  # (B, L-1) the token predicted at each position
    old_logprobs: torch.Tensor  # (B, L-1) behaviour log-probs on response positions, 0 elsewhere
    weights: torch.Tensor  # (B, L-1) each response token's share of the batch loss, 0 elsewhere
    advantages: torch.Tensor  # (B,)
    temperatures: torch.Tensor  # (B,) the temperature each sample was sampled (and is scored) at
    tokens: int  # real tokens (prompt + response)
    response_tokens: int

    def to(self, device: torch.device) -> MicroBatch:
        """The same batch with its tensors on ``device``."""
        return dataclasses.replace(
            self,
            input_ids=self.input_ids.to(device),
            attention_mask=self.attention_mask.to(device),
            response_mask=self.response_mask.to(device),
            targets=self.targets.to(device),
            old_logprobs=self.old_logprobs.to(device),
            weights=self.weights.to(device),
            advantages=self.advantages.to(device),
            temperatures=self.temperatures.to(device),
        )

    def scaled(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits`` of the response positions ``(N, V)`` divided by their sample's temperature."""
        per_token = self.temperatures[:, None].expand_as(self.response_mask)[self.response_mask]  # (N,)
        return logits / per_token[:, None]


def pack_micro_batches(
    samples: list[Sample], weights: list[list[float]], token_budget: int, pad_token_id: int
) -> list[MicroBatch]:
    """Pack ``samples`` into micro-batches of at most ``token_budget`` padded tokens (rows x length).

    Samples are sorted longest first so that rows of one micro-batch have similar lengths and little
    padding; a sample longer than the budget gets a micro-batch of its own.

    Args:
        samples: the batch.
        weights: per response token of each sample, its weight in the batch loss (:func:`token_weights`).
        token_budget: most rows x padded length in one micro-batch.
        pad_token_id: filler id on padded positions (masked out everywhere).
    """
    lengths = [len(s.prompt_token_ids) + len(s.response_token_ids) for s in samples]
    order = sorted(range(len(samples)), key=lambda i: lengths[i], reverse=True)
    groups: list[list[int]] = []
    for i in order:
        if groups and (len(groups[-1]) + 1) * lengths[groups[-1][0]] <= token_budget:
            groups[-1].append(i)
        else:
            groups.append([i])

    batches = []
    for group in groups:
        rows, width = len(group), lengths[group[0]]
        input_ids = torch.full((rows, width), pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((rows, width), dtype=torch.long)
        response_mask = torch.zeros((rows, width - 1), dtype=torch.bool)
        old_logprobs = torch.zeros((rows, width - 1), dtype=torch.float32)
        token_weight = torch.zeros((rows, width - 1), dtype=torch.float32)
        advantages = torch.empty(rows, dtype=torch.float32)
        temperatures = torch.empty(rows, dtype=torch.float32)
        for row, i in enumerate(group):
            sample = samples[i]
            p, n = len(sample.prompt_token_ids), lengths[i]
            input_ids[row, :n] = torch.tensor([*sample.prompt_token_ids, *sample.response_token_ids])
            attention_mask[row, :n] = 1
            # Response tokens sit at p..n-1, so the positions predicting them are p-1..n-2.
            response_mask[row, p - 1 : n - 1] = True
            old_logprobs[row, p - 1 : n - 1] = torch.tensor(sample.old_logprobs, dtype=torch.float32)
            token_weight[row, p - 1 : n - 1] = torch.tensor(weights[i], dtype=torch.float32)
            advantages[row] = sample.advantage
            temperatures[row] = sample.temperature
        batches.append(
            MicroBatch(
                input_ids=input_ids,
                attention_mask=attention_mask,
                response_mask=response_mask,
                targets=input_ids[:, 1:],
                old_logprobs=old_logprobs,
                weights=token_weight,
                advantages=advantages,
                temperatures=temperatures,
                tokens=sum(lengths[i] for i in group),
                response_tokens=int(response_mask.sum()),
            )
        )
    return batches


def response_logits(model: Any, batch: MicroBatch, *, slice_logits: bool) -> torch.Tensor:
    """Logits at the positions that predict response tokens: ``(N, vocab)``, N = response tokens, row-major.

    With ``slice_logits`` the model projects only those positions onto the vocabulary (transformers'
    ``logits_to_keep`` with a boolean mask), skipping the prompt's share of the (large) output layer.
    """
    keep = torch.nn.functional.pad(batch.response_mask, (0, 1))  # (B, L): hidden state t predicts token t+1
    if slice_logits:
        out = model(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, logits_to_keep=keep, use_cache=False
        )
        return out.logits
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
    return out.logits[keep]


def supports_logits_mask(model: Any) -> bool:
    """Whether ``model.forward`` takes a boolean ``logits_to_keep`` mask (transformers >= 5)."""
    import transformers.modeling_utils as modeling_utils

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    params = inspect.signature(base.forward).parameters
    return "logits_to_keep" in params and hasattr(modeling_utils, "slice_logits_to_keep")


def token_logprobs(
    model: Any,
    batch: MicroBatch,
    *,
    slice_logits: bool | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities of ``batch``'s response tokens under ``model``, scored at each sample's temperature.

    Args:
        model: a causal LM (the policy, or the frozen reference).
        batch: the micro-batch, on the model's device.
        slice_logits: project only the response positions onto the vocabulary (see :func:`response_logits`);
            None: when the model supports it.
        autocast_dtype: run the forward under autocast to this dtype (bf16 on CUDA); the log-softmax is float32.

    Returns ``(logprobs, logp_all)``: ``(B, L-1)`` the log-prob of the token each position predicts, 0 off the
    response; and ``(N, V)`` the whole log-distribution at the N response positions (for the entropy).
    """
    if slice_logits is None:
        slice_logits = supports_logits_mask(model)
    context: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
    if autocast_dtype is not None:
        context = torch.autocast(device_type=batch.input_ids.device.type, dtype=autocast_dtype)
    with context:
        logits = response_logits(model, batch, slice_logits=slice_logits)  # (N, V)
    mask = batch.response_mask  # (B, T), T = L-1
    logp_all = torch.log_softmax(batch.scaled(logits.float()), dim=-1)  # (N, V)
    token_logp = logp_all.gather(-1, batch.targets[mask][:, None]).squeeze(-1)  # (N,)
    logprobs = torch.zeros(mask.shape, device=logits.device).masked_scatter(mask, token_logp)  # (B, T)
    return logprobs, logp_all
