"""Token weights and the PPO-clip policy loss, against hand computation."""

from __future__ import annotations

import math

import pytest
import torch

from agentbolt.trainer.loss import policy_loss, token_weights
from agentbolt.types import Sample


def sample(rollout_id: str, length: int, advantage: float = 1.0, index: int = 0) -> Sample:
    return Sample(
        rollout_id=rollout_id,
        attempt_id="a1",
        transition_index=index,
        prompt_token_ids=[1],
        response_token_ids=list(range(length)),
        old_logprobs=[-1.0] * length,
        advantage=advantage,
        return_value=advantage,
    )


# Rollout "a" made three calls (2, 5 and 1 tokens), rollout "b" one call of 4 tokens.
BATCH = [sample("a", 2, 1.0, 0), sample("a", 5, 1.0, 1), sample("a", 1, 1.0, 2), sample("b", 4, -1.0, 0)]


def test_token_mean_weighs_every_token_of_the_batch_alike() -> None:
    weights = token_weights(BATCH, "token_mean")
    assert [len(w) for w in weights] == [2, 5, 1, 4]
    assert [x for w in weights for x in w] == pytest.approx([1 / 12] * 12)


def test_seq_mean_weighs_every_sample_alike() -> None:
    weights = token_weights(BATCH, "seq_mean")
    assert [sum(w) for w in weights] == pytest.approx([0.25] * 4)
    assert weights[1] == pytest.approx([1 / 20] * 5)


def test_rollout_mean_weighs_every_rollout_alike_whatever_its_calls_and_tokens() -> None:
    weights = token_weights(BATCH, "rollout_mean")
    assert sum(sum(w) for w in weights[:3]) == pytest.approx(0.5)
    assert sum(weights[3]) == pytest.approx(0.5)
    assert [x for w in weights[:3] for x in w] == pytest.approx([0.5 / 8] * 8)  # even over rollout a's 8 tokens


def test_samples_without_response_tokens_get_no_weight() -> None:
    weights = token_weights([sample("a", 0), sample("b", 2)], "rollout_mean")
    assert weights == [[], pytest.approx([0.5, 0.5])]
    assert token_weights([sample("a", 0)], "token_mean") == [[]]


def test_an_unknown_aggregation_is_refused() -> None:
    with pytest.raises(ValueError, match="aggregation"):
        token_weights(BATCH, "median")  # type: ignore[arg-type]


def _tensors(samples: list[Sample], weights: list[list[float]], logprobs: dict[int, list[float]], rows: range):
    """Right-padded (B, T) tensors of the given rows; padding holds garbage that must not matter."""
    width = max(len(samples[i].response_token_ids) for i in rows)
    lp = torch.full((len(rows), width), 123.0)
    old = torch.full((len(rows), width), -77.0)
    w = torch.full((len(rows), width), 5.0)
    mask = torch.zeros((len(rows), width))
    for r, i in enumerate(rows):
        n = len(samples[i].response_token_ids)
        lp[r, :n] = torch.tensor(logprobs[i])
        old[r, :n] = torch.tensor(samples[i].old_logprobs)
        w[r, :n] = torch.tensor(weights[i])
        mask[r, :n] = 1.0
    adv = torch.tensor([samples[i].advantage for i in rows])
    return lp.requires_grad_(), old, adv, mask, w


@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean", "rollout_mean"])
def test_micro_batch_losses_sum_to_the_full_batch_loss(aggregation: str) -> None:
    gen = torch.Generator().manual_seed(0)
    logprobs = {
        i: (-1.0 + 0.3 * torch.randn(len(s.response_token_ids), generator=gen)).tolist() for i, s in enumerate(BATCH)
    }
    weights = token_weights(BATCH, aggregation)  # type: ignore[arg-type]
    full, _ = policy_loss(*_tensors(BATCH, weights, logprobs, range(4)), clip_low=0.2, clip_high=0.28)
    parts = [
        policy_loss(*_tensors(BATCH, weights, logprobs, rows), clip_low=0.2, clip_high=0.28)[0]
        for rows in (range(0, 1), range(1, 4))
    ]
    assert sum(p.item() for p in parts) == pytest.approx(full.item(), rel=1e-6)


def _one_row(ratios: list[float], advantage: float, ref: list[float] | None = None):
    lp = torch.tensor([[math.log(r) for r in ratios]], requires_grad=True)
    old = torch.zeros_like(lp)
    n = len(ratios)
    ref_t = torch.tensor([ref]) if ref is not None else None
    return lp, old, torch.tensor([advantage]), torch.ones(1, n), torch.full((1, n), 1 / n), ref_t


def test_positive_advantage_clips_ratios_above_one_plus_clip_high() -> None:
    lp, old, adv, mask, w, _ = _one_row([1.5, 0.5, 1.1], 1.0)
    loss, metrics = policy_loss(lp, old, adv, mask, w, clip_low=0.2, clip_high=0.2)
    assert loss.item() == pytest.approx(-(1.2 + 0.5 + 1.1) / 3)  # min(r A, clip(r) A), negated
    assert metrics["clip_fraction"] == pytest.approx(1 / 3)
    assert metrics["ratio_mean"] == pytest.approx((1.5 + 0.5 + 1.1) / 3)
    expected_kl = sum(r - 1 - math.log(r) for r in (1.5, 0.5, 1.1)) / 3
    assert metrics["approx_kl"] == pytest.approx(expected_kl)
    assert metrics["weight"] == pytest.approx(1.0)
    loss.backward()
    # The clipped token gets no gradient; the others d(-r/3)/dlogp = -r/3.
    assert lp.grad is not None
    assert lp.grad[0].tolist() == pytest.approx([0.0, -0.5 / 3, -1.1 / 3])


def test_negative_advantage_clips_ratios_below_one_minus_clip_low() -> None:
    lp, old, adv, mask, w, _ = _one_row([1.5, 0.5, 1.1], -1.0)
    loss, metrics = policy_loss(lp, old, adv, mask, w, clip_low=0.2, clip_high=0.2)
    assert loss.item() == pytest.approx((1.5 + 0.8 + 1.1) / 3)
    assert metrics["clip_fraction"] == pytest.approx(1 / 3)
    loss.backward()
    assert lp.grad is not None
    assert lp.grad[0].tolist() == pytest.approx([1.5 / 3, 0.0, 1.1 / 3])


def test_clip_low_and_clip_high_are_separate() -> None:
    lp, old, adv, mask, w, _ = _one_row([1.5, 0.5], 1.0)
    loss, _ = policy_loss(lp, old, adv, mask, w, clip_low=0.1, clip_high=0.28)
    assert loss.item() == pytest.approx(-(1.28 + 0.5) / 2)
    lp, old, adv, mask, w, _ = _one_row([1.5, 0.5], -1.0)
    loss, _ = policy_loss(lp, old, adv, mask, w, clip_low=0.1, clip_high=0.28)
    assert loss.item() == pytest.approx((1.5 + 0.9) / 2)


def test_kl_penalty_adds_the_k3_estimate_to_the_reference() -> None:
    ref = [0.0, math.log(2.0)]
    lp, old, adv, mask, w, ref_t = _one_row([1.0, 1.0], 0.0, ref)  # zero advantage: only the KL remains
    loss, metrics = policy_loss(lp, old, adv, mask, w, clip_low=0.2, clip_high=0.2, ref_logprobs=ref_t, kl_coef=0.5)
    k3 = [math.exp(d) - d - 1 for d in ref]  # d = ref - logprob, logprob = 0
    assert metrics["kl_ref"] == pytest.approx(sum(k3) / 2)
    assert loss.item() == pytest.approx(0.5 * sum(k3) / 2)
    no_penalty, metrics0 = policy_loss(lp, old, adv, mask, w, clip_low=0.2, clip_high=0.2, ref_logprobs=ref_t)
    assert no_penalty.item() == pytest.approx(0.0) and metrics0["kl_ref"] == pytest.approx(sum(k3) / 2)


def test_kl_coefficient_without_reference_logprobs_is_refused() -> None:
    lp, old, adv, mask, w, _ = _one_row([1.0], 1.0)
    with pytest.raises(ValueError, match="ref_logprobs"):
        policy_loss(lp, old, adv, mask, w, clip_low=0.2, clip_high=0.2, kl_coef=0.1)
