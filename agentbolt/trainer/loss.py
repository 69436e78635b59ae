"""The token-level policy loss: PPO-clip on the gateway's behaviour logprobs, optional KL to a reference.

``token_weights`` decides how much each response token counts, over the *whole* batch, so the loss
of a batch is the plain sum of its micro-batches' losses (no re-averaging per micro-batch):

* ``token_mean``: every response token of the batch weighs 1 / (tokens in the batch);
* ``seq_mean``: every sample (transition) weighs 1 / (samples), spread over its tokens;
* ``rollout_mean``: every rollout weighs 1 / (rollouts), spread evenly over all the tokens of its
  transitions -- a rollout that made ten calls weighs what a rollout that made one does.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from agentbolt.types import Sample

Aggregation = Literal["token_mean", "seq_mean", "rollout_mean"]


def token_weights(samples: Sequence[Sample], aggregation: Aggregation) -> list[list[float]]:
    """One weight per response token of each sample; all weights of the batch sum to 1.

    Samples with no response tokens get an empty list and do not count.
    """
    lengths = [len(s.response_token_ids) for s in samples]
    if aggregation == "token_mean":
        total = sum(lengths)
        return [[1.0 / total] * n if n else [] for n in lengths]
    if aggregation == "seq_mean":
        count = sum(1 for n in lengths if n)
        return [[1.0 / (count * n)] * n if n else [] for n in lengths]
    if aggregation == "rollout_mean":
        rollout_tokens: Counter[str] = Counter()
        for s, n in zip(samples, lengths, strict=True):
            rollout_tokens[s.rollout_id] += n
        rollouts = sum(1 for n in rollout_tokens.values() if n)
        return [
            [1.0 / (rollouts * rollout_tokens[s.rollout_id])] * n if n else []
            for s, n in zip(samples, lengths, strict=True)
        ]
    raise ValueError(f"unknown loss aggregation {aggregation!r}: use token_mean, seq_mean or rollout_mean")


def policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    weights: Tensor,
    *,
    clip_low: float,
    clip_high: float,
    ref_logprobs: Tensor | None = None,
    kl_coef: float = 0.0,
) -> tuple[Tensor, dict[str, float]]:
    """PPO-clip loss summed with per-token ``weights`` (from :func:`token_weights`), plus ``kl_coef`` * k3 KL.

    Args:
        logprobs: (B, T) log-probabilities of the response tokens under the policy being trained.
        old_logprobs: (B, T) behaviour log-probabilities recorded by the gateway.
        advantages: (B,) one advantage per sample.
        mask: (B, T) 1 on response tokens, 0 on padding.
        weights: (B, T) token weights; padding positions are ignored whatever they hold.
        clip_low, clip_high: the ratio is clipped to [1 - clip_low, 1 + clip_high] (asymmetric allowed).
        ref_logprobs: (B, T) log-probabilities under the frozen reference, for the KL penalty/metric.
        kl_coef: weight of the k3 estimator of KL(policy || reference) per token.

    Returns:
        The loss (a scalar tensor with gradient) and metrics averaged over this call's tokens with the
        same weights: clip_fraction (share where the clipped branch was taken), approx_kl (k3 vs the
        behaviour policy), ratio_mean, kl_ref (when ref_logprobs is given), and ``weight`` (the sum of
        the weights used) to combine micro-batches' metrics.

    Raises:
        ValueError: kl_coef > 0 without ref_logprobs.
    """
    if kl_coef > 0 and ref_logprobs is None:
        raise ValueError("kl_coef > 0 needs ref_logprobs (the reference model's log-probabilities)")
    valid = mask.bool()
    w = torch.where(valid, weights, torch.zeros_like(weights))  # (B, T) zero on padding
    log_ratio = torch.where(valid, logprobs - old_logprobs, torch.zeros_like(logprobs))  # (B, T)
    ratio = torch.exp(log_ratio)
    adv = advantages.unsqueeze(-1)  # (B, 1) broadcast over tokens
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    per_token = torch.maximum(unclipped, clipped)  # (B, T) the pessimistic bound
    kl_ref = None
    if ref_logprobs is not None:
        # k3 estimator of KL(pi || ref): exp(d) - d - 1 with d = ref - pi; >= 0, unbiased, low variance.
        d = torch.where(valid, ref_logprobs - logprobs, torch.zeros_like(logprobs)).clamp(-20.0, 20.0)
        kl_ref = torch.exp(d) - d - 1.0  # (B, T)
        if kl_coef > 0:
            per_token = per_token + kl_coef * kl_ref
    loss = (w * per_token).sum()

    with torch.no_grad():
        total = w.sum()
        denom = total if total > 0 else torch.ones_like(total)

        def mean(x: Tensor) -> float:
            return float((w * x).sum() / denom)

        metrics = {
            "clip_fraction": mean((clipped > unclipped).to(w.dtype)),
            "approx_kl": mean(ratio - 1.0 - log_ratio),  # k3 of KL(behaviour || policy)
            "ratio_mean": mean(ratio),
            "weight": float(total),
        }
        if kl_ref is not None:
            metrics["kl_ref"] = mean(kl_ref)
    return loss, metrics
