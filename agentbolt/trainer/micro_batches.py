"""Samples packed into micro-batches, and the log-probabilities a policy gives their response tokens.

:func:`pack_micro_batches` lays samples out under a token budget, in one of two layouts:

* **plain**: a row per sample, its prompt and response right-padded;
* **shared prompts**: samples with the very same prompt (the samples of a GRPO group) run it once: the prompt's
  forward keeps its KV cache, the cache is copied to each of the group's rows (gradients flow back through the
  copies), and the responses run against it. The log-probabilities and gradients are the plain layout's to float
  rounding (tests/trainer/test_micro_batches.py), for 1/group of the prompt's compute and activations.

:func:`token_logprobs` is the one place the trainer scores response tokens (for the policy and for the frozen
reference alike): the decoder's hidden state at each position that predicts a response token, projected onto the
vocabulary a chunk of positions at a time, scaled by the sample's temperature, log-softmax, gather — and, from the
same chunk under no_grad, the entropy. A chunk's logits are recomputed in the backward pass instead of kept
(:func:`torch.utils.checkpoint.checkpoint`), so what a micro-batch holds for backward grows with its positions,
not positions x vocabulary.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint

from agentbolt.types import Sample

log = logging.getLogger(__name__)

# Logits materialised at once while scoring: rows = this / vocabulary (341 of SmolLM2's 49,152 tokens, 64 MiB in
# float32). Measured on the demo model's output layer, 850 positions, forward + backward, one thread: 341 rows
# 2.06 s, 210 MiB at peak; 85 rows 2.77 s, the same memory (the layer's weight gradient, 113 MiB, is the floor);
# all 850 at once 1.9 s, 680 MiB; the whole log-softmax kept for backward (no recomputation) 1.43 s, 524 MiB.
LOGITS_CHUNK_ELEMENTS = 1 << 24


@dataclass
class SharedPrompts:
    """The prompts of a shared-prompt micro-batch: each distinct prompt once, right-padded to length P."""

    input_ids: torch.Tensor  # (G, P)
    attention_mask: torch.Tensor  # (G, P) 1 on real tokens
    lengths: torch.Tensor  # (G,) real tokens of each prompt
    of_row: torch.Tensor  # (B,) the prompt each response row continues

    def to(self, device: torch.device) -> SharedPrompts:
        return SharedPrompts(
            input_ids=self.input_ids.to(device),
            attention_mask=self.attention_mask.to(device),
            lengths=self.lengths.to(device),
            of_row=self.of_row.to(device),
        )


@dataclass
class MicroBatch:
    """Samples packed for one forward/backward pass: B rows, the model's input right-padded to length L.

    The loss's tensors are ``(B, R)``, R the longest response: column j is response token j. Without ``prompts``
    a row is a sample's prompt + response; with them, only its response (L = R), run after its prompt's KV cache.
    """

    rows: list[int]  # the index in the batch of each row's sample
    input_ids: torch.Tensor  # (B, L)
    attention_mask: torch.Tensor  # (B, L) 1 on real tokens
    predicts: torch.Tensor  # (B, L) bool: the hidden state at t predicts a response token (see response_hidden)
    prompts: SharedPrompts | None
    response_mask: torch.Tensor  # (B, R) bool: a response token
    targets: torch.Tensor  # (B, R) the response tokens
    old_logprobs: torch.Tensor  # (B, R) behaviour log-probs, 0 off the response
    weights: torch.Tensor  # (B, R) each response token's share of the batch loss, 0 off the response
    advantages: torch.Tensor  # (B,)
    temperatures: torch.Tensor  # (B,) the temperature each sample was sampled (and is scored) at
    tokens: int  # the samples' real tokens (prompt + response)
    forward_tokens: int  # real tokens the model runs: a shared prompt counts once
    response_tokens: int

    def to(self, device: torch.device) -> MicroBatch:
        """The same batch with its tensors on ``device``."""
        return dataclasses.replace(
            self,
            input_ids=self.input_ids.to(device),
            attention_mask=self.attention_mask.to(device),
            predicts=self.predicts.to(device),
            prompts=self.prompts.to(device) if self.prompts is not None else None,
            response_mask=self.response_mask.to(device),
            targets=self.targets.to(device),
            old_logprobs=self.old_logprobs.to(device),
            weights=self.weights.to(device),
            advantages=self.advantages.to(device),
            temperatures=self.temperatures.to(device),
        )


# --- packing ---------------------------------------------------------------------------------------


def pack_micro_batches(
    samples: list[Sample],
    weights: list[list[float]],
    token_budget: int,
    pad_token_id: int,
    *,
    share_prompts: bool = False,
) -> list[MicroBatch]:
    """Pack ``samples`` into micro-batches of at most ``token_budget`` padded tokens run through the model.

    Plain micro-batches hold rows x padded length tokens; samples are sorted longest first so that rows of one
    micro-batch have similar lengths and little padding. With ``share_prompts``, samples whose prompt another
    sample has too go into shared-prompt micro-batches, holding prompts x padded prompt length + rows x padded
    response length (a group larger than the budget is split, each part running its prompt). A sample longer
    than the budget gets a micro-batch of its own.

    Args:
        samples: the batch.
        weights: per response token of each sample, its weight in the batch loss (:func:`token_weights`).
        token_budget: most padded tokens in one micro-batch.
        pad_token_id: filler id on padded positions (masked out everywhere).
        share_prompts: run each shared prompt once per micro-batch (the model must allow it: :func:`split_model`).
    """
    groups: list[list[int]] = []
    alone = list(range(len(samples)))
    if share_prompts:
        by_prompt: dict[tuple[int, ...], list[int]] = {}
        for i, s in enumerate(samples):
            by_prompt.setdefault(tuple(s.prompt_token_ids), []).append(i)
        groups = [rows for rows in by_prompt.values() if len(rows) > 1]
        alone = [rows[0] for rows in by_prompt.values() if len(rows) == 1]
    return [
        *(_plain_batch(samples, weights, rows, pad_token_id) for rows in _pack_plain(samples, alone, token_budget)),
        *(_shared_batch(samples, weights, part, pad_token_id) for part in _pack_shared(samples, groups, token_budget)),
    ]


def _pack_plain(samples: list[Sample], indices: list[int], budget: int) -> list[list[int]]:
    length = {i: len(samples[i].prompt_token_ids) + len(samples[i].response_token_ids) for i in indices}
    batches: list[list[int]] = []
    for i in sorted(indices, key=lambda i: length[i], reverse=True):
        if batches and (len(batches[-1]) + 1) * length[batches[-1][0]] <= budget:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def _pack_shared(samples: list[Sample], groups: list[list[int]], budget: int) -> list[list[list[int]]]:
    """Micro-batches as lists of groups (each: indices of samples with one prompt), longest prompts first."""
    batches: list[list[list[int]]] = []
    prompts = prompt_width = rows = response_width = 0  # of the last micro-batch
    for group in sorted(groups, key=lambda g: len(samples[g[0]].prompt_token_ids), reverse=True):
        p = len(samples[group[0]].prompt_token_ids)
        running = False  # the last micro-batch runs this group's prompt already
        for i in sorted(group, key=lambda i: len(samples[i].response_token_ids), reverse=True):
            r = len(samples[i].response_token_ids)
            cost = (prompts + (not running)) * max(prompt_width, p) + (rows + 1) * max(response_width, r)
            if not batches or cost > budget:
                batches.append([])
                prompts = prompt_width = rows = response_width = 0
                running = False
            if not running:
                batches[-1].append([])
                prompts, running = prompts + 1, True
            batches[-1][-1].append(i)
            prompt_width, rows, response_width = max(prompt_width, p), rows + 1, max(response_width, r)
    return batches


def _loss_tensors(samples: list[Sample], weights: list[list[float]], rows: list[int]) -> dict[str, Any]:
    """The (B, R) and (B,) tensors of the loss, for ``rows`` (indices into ``samples``) in this order."""
    width = max(len(samples[i].response_token_ids) for i in rows)
    response_mask = torch.zeros((len(rows), width), dtype=torch.bool)
    targets = torch.zeros((len(rows), width), dtype=torch.long)
    old_logprobs = torch.zeros((len(rows), width))
    token_weight = torch.zeros((len(rows), width))
    for row, i in enumerate(rows):
        s, r = samples[i], len(samples[i].response_token_ids)
        response_mask[row, :r] = True
        targets[row, :r] = torch.tensor(s.response_token_ids)
        old_logprobs[row, :r] = torch.tensor(s.old_logprobs, dtype=torch.float32)
        token_weight[row, :r] = torch.tensor(weights[i], dtype=torch.float32)
    return {
        "rows": rows,
        "response_mask": response_mask,
        "targets": targets,
        "old_logprobs": old_logprobs,
        "weights": token_weight,
        "advantages": torch.tensor([samples[i].advantage for i in rows], dtype=torch.float32),
        "temperatures": torch.tensor([samples[i].temperature for i in rows], dtype=torch.float32),
        "tokens": sum(len(samples[i].prompt_token_ids) + len(samples[i].response_token_ids) for i in rows),
        "response_tokens": int(response_mask.sum()),
    }


def _plain_batch(samples: list[Sample], weights: list[list[float]], rows: list[int], pad: int) -> MicroBatch:
    lengths = [len(samples[i].prompt_token_ids) + len(samples[i].response_token_ids) for i in rows]
    input_ids = torch.full((len(rows), max(lengths)), pad, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    predicts = torch.zeros(input_ids.shape, dtype=torch.bool)
    for row, (i, n) in enumerate(zip(rows, lengths, strict=True)):
        s = samples[i]
        input_ids[row, :n] = torch.tensor([*s.prompt_token_ids, *s.response_token_ids])
        attention_mask[row, :n] = 1
        # Response tokens sit at p..n-1, so the positions predicting them are p-1..n-2.
        predicts[row, len(s.prompt_token_ids) - 1 : n - 1] = True
    loss = _loss_tensors(samples, weights, rows)
    return MicroBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        predicts=predicts,
        prompts=None,
        forward_tokens=loss["tokens"],
        **loss,
    )


def _shared_batch(
    samples: list[Sample], weights: list[list[float]], groups: Sequence[list[int]], pad: int
) -> MicroBatch:
    rows = [i for group in groups for i in group]
    prompts = [samples[group[0]].prompt_token_ids for group in groups]
    prompt_ids = torch.full((len(groups), max(map(len, prompts))), pad, dtype=torch.long)
    prompt_mask = torch.zeros_like(prompt_ids)
    for g, prompt in enumerate(prompts):
        prompt_ids[g, : len(prompt)] = torch.tensor(prompt)
        prompt_mask[g, : len(prompt)] = 1
    loss = _loss_tensors(samples, weights, rows)
    response_mask = loss["response_mask"]
    # The prompt's last hidden state predicts response token 0; response position t predicts token t+1.
    predicts = torch.nn.functional.pad(response_mask[:, 1:], (0, 1))
    return MicroBatch(
        input_ids=torch.where(response_mask, loss["targets"], pad),
        attention_mask=response_mask.long(),
        predicts=predicts,
        prompts=SharedPrompts(
            input_ids=prompt_ids,
            attention_mask=prompt_mask,
            lengths=torch.tensor([len(p) for p in prompts]),
            of_row=torch.tensor([g for g, group in enumerate(groups) for _ in group]),
        ),
        forward_tokens=sum(map(len, prompts)) + loss["response_tokens"],
        **loss,
    )


# --- the model, split where its logits are computed ------------------------------------------------


@dataclass(frozen=True)
class DecoderHead:
    """A causal LM whose logits are ``head(decoder(...).last_hidden_state)``: both parts, to call apart."""

    decoder: Any  # the transformer body: ids -> final hidden states (after the last norm)
    head: Any  # the output layer: hidden states -> logits
    cache_arg: str  # the decoder's keyword for a KV cache: cache (transformers >= 5.24) or past_key_values
    shares_prompts: bool  # the shared-prompt layout gives this model's plain log-probabilities


def split_model(model: Any, autocast_dtype: torch.dtype | None = None) -> DecoderHead | None:
    """``model``'s decoder and output layer, when its logits are exactly the one applied to the other.

    Checked on a few tokens (under autocast to ``autocast_dtype``, as the trainer runs it), as is the shared-prompt
    layout (``shares_prompts``: a model whose KV cache cannot be copied row by row, or that computes something else
    with one, runs plain micro-batches). None where the logits are more than that (soft-capped or scaled, as
    Gemma 2's or Cohere's): the trainer then takes the whole model's logits of the response positions, all at once
    (memory: positions x vocabulary), and runs plain micro-batches.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = base.get_decoder() if hasattr(base, "get_decoder") else None
    head = base.get_output_embeddings()
    if decoder is None or head is None or decoder is base:
        return None
    cache_arg = "cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values"
    split = DecoderHead(decoder, head, cache_arg, shares_prompts=False)
    # Two prompts of 3 and 2 tokens, two responses each of 1 to 3 tokens: padding in both layouts.
    vocab = int(model.config.vocab_size)
    ids = [(7919 * k + 13) % vocab for k in range(13)]
    probe = [
        _probe_sample(ids[0:3], ids[5:8]),
        _probe_sample(ids[0:3], ids[8:9]),
        _probe_sample(ids[3:5], ids[9:11]),
        _probe_sample(ids[3:5], ids[11:13]),
    ]
    weights = [[1.0] * len(s.response_token_ids) for s in probe]
    first = next(model.parameters())
    device = first.device
    # Rounding differs with the batch's shape: by float32's, or bfloat16's when the compute is in 16 bits.
    tolerance = 1e-4 if autocast_dtype is None and first.dtype in (torch.float32, torch.float64) else 3e-2
    plain, shared = (pack_micro_batches(probe, weights, 64, 0, share_prompts=s)[0].to(device) for s in (False, True))

    def head_on_decoder() -> bool:
        logits = model(input_ids=plain.input_ids, attention_mask=plain.attention_mask).logits[plain.predicts]
        return _close(head(response_hidden(split, plain)), logits, tolerance)

    def shared_is_plain() -> bool:
        expected = _by_sample(plain, token_logprobs(model, plain, split=split)[0])
        return _close(_by_sample(shared, token_logprobs(model, shared, split=split)[0]), expected, tolerance)

    training = model.training
    model.eval()
    try:
        with torch.no_grad(), _autocast(device, autocast_dtype):
            if not _holds(head_on_decoder, f"{type(base).__name__}: logits are not the output layer's on the decoder"):
                return None
            shares = _holds(shared_is_plain, f"{type(base).__name__}: prompts cannot be shared")
    finally:
        model.train(training)
    return dataclasses.replace(split, shares_prompts=shares)


def _holds(check: Callable[[], bool], otherwise: str) -> bool:
    """Whether ``check`` passes; logs ``otherwise`` when it fails or raises (a model without that API)."""
    try:
        if check():
            return True
        log.info("%s: the results differ", otherwise)
    except Exception as exc:  # any failure means the model is run the other way
        log.info("%s: %s: %s", otherwise, type(exc).__name__, exc)
    return False


def _autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager[Any]:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _probe_sample(prompt: list[int], response: list[int]) -> Sample:
    return Sample(
        rollout_id="probe",
        attempt_id="probe",
        transition_index=0,
        prompt_token_ids=prompt,
        response_token_ids=response,
        old_logprobs=[0.0] * len(response),
        advantage=0.0,
        return_value=0.0,
    )


def _by_sample(batch: MicroBatch, per_row: torch.Tensor) -> torch.Tensor:
    """``per_row`` (B, ...) in the order of the samples rather than of ``batch``'s rows."""
    return per_row[torch.tensor(batch.rows).argsort()]


def _close(a: torch.Tensor, b: torch.Tensor, tolerance: float) -> bool:
    """Equal up to ``tolerance`` relative to ``b``'s largest magnitude (or 1)."""
    return a.shape == b.shape and bool((a - b).abs().max() <= tolerance * b.abs().max().clamp(min=1.0))


# --- scoring ---------------------------------------------------------------------------------------


def response_hidden(split: DecoderHead, batch: MicroBatch) -> torch.Tensor:
    """The decoder's hidden states that predict ``batch``'s response tokens: ``(N, H)``, N = response tokens,
    row-major (row 0's tokens in order, then row 1's...)."""
    if batch.prompts is None:
        out = split.decoder(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
        return out.last_hidden_state[batch.predicts]
    prompts = batch.prompts
    out = split.decoder(input_ids=prompts.input_ids, attention_mask=prompts.attention_mask, use_cache=True)
    cache = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
    cache.batch_select_indices(prompts.of_row)  # (G, ...) -> (B, ...): each row its prompt's keys and values
    last = out.last_hidden_state[torch.arange(len(prompts.lengths)), prompts.lengths - 1][prompts.of_row]  # (B, H)
    # The padding after a shorter prompt stays masked; positions continue from the prompt's real length.
    attention_mask = torch.cat([prompts.attention_mask[prompts.of_row], batch.attention_mask], dim=1)  # (B, P+L)
    positions = prompts.lengths[prompts.of_row, None] + torch.arange(batch.input_ids.shape[1], device=last.device)
    out = split.decoder(
        input_ids=batch.input_ids,
        attention_mask=attention_mask,
        position_ids=positions,
        use_cache=True,
        **{split.cache_arg: cache},
    )
    hidden = torch.cat([last[:, None], out.last_hidden_state], dim=1)  # (B, 1+L, H)
    return hidden[torch.nn.functional.pad(batch.predicts, (1, 0), value=True)]


def supports_logits_mask(model: Any) -> bool:
    """Whether ``model.forward`` takes a boolean ``logits_to_keep`` mask (transformers >= 5)."""
    import transformers.modeling_utils as modeling_utils

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    params = inspect.signature(base.forward).parameters
    return "logits_to_keep" in params and hasattr(modeling_utils, "slice_logits_to_keep")


def response_logits(model: Any, batch: MicroBatch) -> torch.Tensor:
    """The whole model's logits at the positions that predict ``batch``'s response tokens (plain layout):
    ``(N, V)``. For a model :func:`split_model` cannot split; only those positions are projected where the model
    takes a ``logits_to_keep`` mask."""
    if batch.prompts is not None:
        raise ValueError("shared-prompt micro-batches need a model split_model() can split")
    if supports_logits_mask(model):
        keep = batch.predicts
        return model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, logits_to_keep=keep).logits
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
    return out.logits[batch.predicts]


def token_logprobs(
    model: Any,
    batch: MicroBatch,
    *,
    split: DecoderHead | None,
    autocast_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities of ``batch``'s response tokens under ``model``, scored at each sample's temperature.

    Args:
        model: a causal LM (the policy, or the frozen reference).
        batch: the micro-batch, on the model's device.
        split: ``model`` split by :func:`split_model`; None: score the whole model's logits (plain layout only).
        autocast_dtype: run the forward under autocast to this dtype (bf16 on CUDA); the log-softmax is float32.

    Returns ``(logprobs, entropy)``: ``(B, R)`` the log-prob of each response token, 0 off the response; and
    ``(N,)`` without gradient, the entropy of the whole (temperature-scaled) distribution at each of the N
    response positions, row-major.
    """
    mask = batch.response_mask  # (B, R)
    targets = batch.targets[mask]  # (N,)
    temperatures = batch.temperatures[:, None].expand_as(mask)[mask]  # (N,)
    with _autocast(batch.input_ids.device, autocast_dtype):
        if split is None:
            inputs, project = response_logits(model, batch), _identity  # (N, V) logits
        else:
            inputs, project = response_hidden(split, batch), split.head  # (N, H) hidden states
        rows = max(1, LOGITS_CHUNK_ELEMENTS // int(model.config.vocab_size))
        parts = []
        for start in range(0, len(targets), rows):
            part = slice(start, start + rows)
            chunk = (project, inputs[part], targets[part], temperatures[part])
            # Backward recomputes the chunk's logits from its inputs rather than keep (rows, V) of them.
            parts.append(checkpoint(_score, *chunk, use_reentrant=False) if inputs.requires_grad else _score(*chunk))
    token_logp = torch.cat([p[0] for p in parts])  # (N,)
    entropy = torch.cat([p[1] for p in parts])  # (N,)
    logprobs = torch.zeros(mask.shape, device=token_logp.device).masked_scatter(mask, token_logp)  # (B, R)
    return logprobs, entropy


def _score(
    project: Any, inputs: torch.Tensor, targets: torch.Tensor, temperatures: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One chunk: ``(C,)`` log-probs of ``targets`` (with gradient) and ``(C,)`` entropies (without)."""
    logp_all = torch.log_softmax(project(inputs).float() / temperatures[:, None], dim=-1)  # (C, V)
    logp = logp_all.gather(-1, targets[:, None]).squeeze(-1)
    # Last: recomputing the chunk for backward stops once it has what backward needs, so this runs once.
    with torch.no_grad():
        entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x
