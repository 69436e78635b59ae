"""Micro-batches and response log-probabilities: chunked scoring and shared prompts give the plain results."""

from __future__ import annotations

import copy
import random
from typing import Any

import pytest

torch = pytest.importorskip("torch", reason="the trainer needs the train extra: bash scripts/setup.sh dev,train")

from agentbolt.engine import tiny_random_model  # noqa: E402
from agentbolt.trainer import micro_batches  # noqa: E402
from agentbolt.trainer.loss import token_weights  # noqa: E402
from agentbolt.trainer.micro_batches import pack_micro_batches, split_model, token_logprobs  # noqa: E402
from agentbolt.trainer.trainer import Trainer  # noqa: E402
from agentbolt.types import LoraSettings, LossConfig, Sample, TrainerConfig  # noqa: E402

# (prompt length, responses' lengths): groups sharing a prompt of different lengths, and two lone samples.
GROUPS = [(9, [5, 1, 7]), (4, [3, 6]), (12, [2, 2, 4, 3]), (6, [4]), (3, [8])]
TEMPERATURES = [1.0, 0.7, 1.3]


def grouped_samples(vocab: int, seed: int = 0) -> list[Sample]:
    """Samples in groups that share a prompt (GROUPS), shuffled, with varied temperatures and advantages."""
    rng = random.Random(seed)
    samples = []
    for g, (p, lengths) in enumerate(GROUPS):
        prompt = [rng.randrange(vocab) for _ in range(p)]
        for k, n in enumerate(lengths):
            samples.append(
                Sample(
                    rollout_id=f"r{g}-{k}",
                    attempt_id=f"a{g}-{k}",
                    group_id=f"g{g}",
                    transition_index=0,
                    prompt_token_ids=prompt,
                    response_token_ids=[rng.randrange(vocab) for _ in range(n)],
                    old_logprobs=[-rng.uniform(5.0, 15.0) for _ in range(n)],
                    temperature=rng.choice(TEMPERATURES),
                    advantage=rng.uniform(-1.0, 1.0),
                    return_value=0.0,
                )
            )
    rng.shuffle(samples)
    return samples


def plain_logprobs(model: Any, sample: Sample) -> Any:
    """``sample``'s response log-probs (with gradient), the textbook way: one sequence, full log-softmax."""
    ids = torch.tensor([[*sample.prompt_token_ids, *sample.response_token_ids]])
    logits = model(input_ids=ids).logits[0].float() / sample.temperature  # (L, V)
    p = len(sample.prompt_token_ids)
    logp = torch.log_softmax(logits[p - 1 : -1], dim=-1)  # (R, V): position t predicts token t+1
    return logp.gather(-1, torch.tensor(sample.response_token_ids)[:, None]).squeeze(-1)


def plain_entropy(model: Any, sample: Sample) -> Any:
    with torch.no_grad():
        ids = torch.tensor([[*sample.prompt_token_ids, *sample.response_token_ids]])
        logits = model(input_ids=ids).logits[0].float() / sample.temperature
        logp = torch.log_softmax(logits[len(sample.prompt_token_ids) - 1 : -1], dim=-1)
        return -(logp.exp() * logp).sum(-1)


def per_sample(model: Any, samples: list[Sample], *, share_prompts: bool, budget: int = 10_000) -> dict[int, Any]:
    """Each sample's response log-probs and entropies through pack_micro_batches and token_logprobs."""
    split = split_model(model)
    weights = token_weights(samples, "token_mean")
    out = {}
    for batch in pack_micro_batches(samples, weights, budget, 0, share_prompts=share_prompts):
        logprobs, entropy = token_logprobs(model, batch, split=split)
        entropies = torch.zeros(batch.response_mask.shape).masked_scatter(batch.response_mask, entropy)
        for row, i in enumerate(batch.rows):
            n = int(batch.response_mask[row].sum())
            out[i] = (logprobs[row, :n], entropies[row, :n])
    return out


def gradients(model: Any, total: Any) -> dict[str, Any]:
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    return dict(zip(params, torch.autograd.grad(total, list(params.values())), strict=True))


def weighted_sum(samples: list[Sample], logprobs: dict[int, Any]) -> Any:
    """A loss-like scalar with a different coefficient on every token (so every token's gradient counts)."""
    rng = random.Random(7)
    terms = [logprobs[i] for i in range(len(samples))]
    return sum((torch.tensor([rng.uniform(-1, 1) for _ in lp]) * lp).sum() for lp in terms)


def assert_same_gradients(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a.keys() == b.keys()
    scale = max(float(g.abs().max()) for g in b.values())
    assert scale > 1e-3
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5 * scale, msg=name)


def test_chunked_logprobs_equal_a_full_log_softmax_in_values_gradients_and_entropy(
    tokenizer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = tiny_random_model(tokenizer, seed=2)
    samples = grouped_samples(len(tokenizer))
    monkeypatch.setattr(micro_batches, "LOGITS_CHUNK_ELEMENTS", 3 * len(tokenizer))  # chunks of 3 positions

    scored = per_sample(model, samples, share_prompts=False)
    expected = {i: plain_logprobs(model, s) for i, s in enumerate(samples)}

    assert len(micro_batches.pack_micro_batches(samples, token_weights(samples, "token_mean"), 10_000, 0)) == 1
    for i, s in enumerate(samples):
        torch.testing.assert_close(scored[i][0], expected[i], rtol=0, atol=1e-5)
        torch.testing.assert_close(scored[i][1], plain_entropy(model, s), rtol=0, atol=1e-4)
    chunked = gradients(model, weighted_sum(samples, {i: lp for i, (lp, _) in scored.items()}))
    assert_same_gradients(chunked, gradients(model, weighted_sum(samples, expected)))


@pytest.mark.parametrize("lora", [None, LoraSettings(r=4, alpha=8)], ids=["full", "lora"])
def test_shared_prompt_forward_equals_running_each_sample_whole(tokenizer: Any, lora: LoraSettings | None) -> None:
    trainer = Trainer(tiny_random_model(tokenizer, seed=4), tokenizer, TrainerConfig(lora=lora), LossConfig())
    model = trainer.model
    if lora is not None:  # a live adapter (B starts at 0): its gradients must flow through the shared cache too
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.1)
    samples = grouped_samples(len(tokenizer), seed=1)
    assert trainer.share_prompts

    shared = per_sample(model, samples, share_prompts=True, budget=25)  # small: a group split across micro-batches
    plain = per_sample(model, samples, share_prompts=False)

    batches = pack_micro_batches(samples, token_weights(samples, "token_mean"), 25, 0, share_prompts=True)
    prompts = [tuple(samples[i].prompt_token_ids) for b in batches if b.prompts is not None for i in set(b.rows)]
    runs = [len({tuple(samples[i].prompt_token_ids) for i in b.rows}) for b in batches if b.prompts is not None]
    assert any(b.prompts is None for b in batches) and sum(runs) > len(set(prompts))  # a prompt runs twice
    for i in range(len(samples)):
        torch.testing.assert_close(shared[i][0], plain[i][0], rtol=0, atol=1e-5)
        torch.testing.assert_close(shared[i][1], plain[i][1], rtol=0, atol=1e-4)
    shared_grads = gradients(model, weighted_sum(samples, {i: lp for i, (lp, _) in shared.items()}))
    plain_grads = gradients(model, weighted_sum(samples, {i: lp for i, (lp, _) in plain.items()}))
    assert_same_gradients(shared_grads, plain_grads)


def test_packing_runs_each_shared_prompt_once_per_micro_batch_within_the_budget(tokenizer: Any) -> None:
    samples = grouped_samples(len(tokenizer))
    weights = token_weights(samples, "token_mean")
    budget = 40

    batches = pack_micro_batches(samples, weights, budget, 0, share_prompts=True)

    assert sorted(i for b in batches for i in b.rows) == list(range(len(samples)))
    for b in batches:
        if b.prompts is None:  # the lone samples: prompt + response rows
            assert b.input_ids.numel() <= budget or len(b.rows) == 1
            continue
        prompts = [tuple(samples[i].prompt_token_ids) for i in b.rows]
        assert prompts == [tuple(b.prompts.input_ids[g, : b.prompts.lengths[g]].tolist()) for g in b.prompts.of_row]
        assert len(set(prompts)) == len(b.prompts.lengths)  # each prompt once
        assert b.prompts.input_ids.numel() + b.input_ids.numel() <= budget or len(b.rows) == 1
        for row, i in enumerate(b.rows):
            r = len(samples[i].response_token_ids)
            assert b.input_ids[row, :r].tolist() == samples[i].response_token_ids
            assert b.old_logprobs[row, :r].tolist() == pytest.approx(samples[i].old_logprobs)
    lone = {i for i, s in enumerate(samples) if sum(t.prompt_token_ids == s.prompt_token_ids for t in samples) == 1}
    assert {i for b in batches if b.prompts is None for i in b.rows} == lone
    shared_tokens = sum(b.forward_tokens for b in batches)
    assert shared_tokens < sum(b.tokens for b in batches)


@pytest.mark.parametrize("kl_coef", [0.0, 0.1])
def test_step_metrics_and_update_are_the_same_with_shared_prompts(tokenizer: Any, kl_coef: float) -> None:
    # Adam with eps=1 and no momentum makes the first update lr * g / (|g| + 1) ~ lr * g: weights compare gradients.
    settings = dict(lr=1.0, eps=1.0, betas=(0.0, 0.0), grad_clip=None, micro_batch_tokens=60)
    loss = LossConfig(kl_coef=kl_coef, aggregation="seq_mean")
    shared, plain = (
        Trainer(tiny_random_model(tokenizer), tokenizer, TrainerConfig(share_prompts=s, **settings), loss)  # type: ignore[arg-type]
        for s in (True, False)
    )
    samples = grouped_samples(len(tokenizer), seed=3)
    before = copy.deepcopy(plain.model)
    start = {n: p.detach().clone() for n, p in plain.model.named_parameters()}
    if kl_coef:  # a reference the policy is not: kl_ref is not 0
        for trainer in (shared, plain):
            with torch.no_grad():
                for p in trainer.reference.parameters():
                    p.mul_(0.9)

    got, expected = shared.step(samples), plain.step(samples)

    assert shared.share_prompts and not plain.share_prompts
    for key in ("loss", "entropy", "clip_fraction", "approx_kl", "ratio_mean", "grad_norm", "kl_ref"):
        if key in expected:
            assert got[key] == pytest.approx(expected[key], rel=1e-4, abs=1e-6), key
    assert ("kl_ref" in got) == (kl_coef > 0) and got.get("kl_ref", 1.0) > 1e-4
    for key in ("tokens", "response_tokens", "samples"):
        assert got[key] == expected[key]
    assert got["forward_tokens"] < expected["forward_tokens"] == expected["tokens"]
    # entropy: the token-weighted mean of each response position's full-vocabulary entropy at its temperature
    weights = token_weights(samples, "seq_mean")
    per_token = [torch.tensor(w) * plain_entropy(before, s) for s, w in zip(samples, weights, strict=True)]
    entropy = float(sum(t.sum() for t in per_token))
    assert got["entropy"] == pytest.approx(entropy, rel=1e-4)
    a, b = ({n: p.detach() for n, p in t.model.named_parameters()} for t in (shared, plain))
    update = max(float((b[n] - start[n]).abs().max()) for n in b)
    assert update > 1e-3
    assert max(float((a[n] - b[n]).abs().max()) for n in b) < 1e-3 * update


def test_a_model_whose_logits_are_not_its_head_on_its_decoder_is_scored_whole(tokenizer: Any) -> None:
    model = tiny_random_model(tokenizer, seed=5)
    forward = model.forward

    def scaled(*args: Any, **kwargs: Any) -> Any:  # soft-capping, logit scaling: logits beyond head(decoder)
        out = forward(*args, **kwargs)
        out.logits = out.logits * 3.0
        return out

    model.forward = scaled
    samples = grouped_samples(len(tokenizer))
    assert split_model(model) is None
    trainer = Trainer(model, tokenizer, TrainerConfig(), LossConfig())
    assert not trainer.share_prompts
    scored = per_sample(model, samples, share_prompts=False)
    for i, s in enumerate(samples):
        torch.testing.assert_close(scored[i][0], plain_logprobs(model, s), rtol=0, atol=1e-5)


def test_a_model_whose_cache_cannot_be_copied_by_row_runs_every_sample_whole(
    tokenizer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers.cache_utils import DynamicCache

    def refuse(self: Any, indices: Any) -> None:
        raise NotImplementedError("this cache keeps its rows")

    monkeypatch.setattr(DynamicCache, "batch_select_indices", refuse)
    trainer = Trainer(tiny_random_model(tokenizer), tokenizer, TrainerConfig(), LossConfig())
    assert trainer.split is not None and not trainer.split.shares_prompts and not trainer.share_prompts
    samples = grouped_samples(len(tokenizer))
    metrics = trainer.step(samples)
    assert metrics["forward_tokens"] == metrics["tokens"]


def test_backward_keeps_nothing_of_vocabulary_width(tokenizer: Any) -> None:
    model = tiny_random_model(tokenizer)
    samples = grouped_samples(len(tokenizer))
    batch = pack_micro_batches(samples, token_weights(samples, "token_mean"), 10_000, 0, share_prompts=True)[-1]
    kept: list[tuple[int, ...]] = []

    def keep(tensor: Any) -> Any:
        kept.append(tuple(tensor.shape))
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        logprobs, _ = token_logprobs(model, batch, split=split_model(model))

    assert batch.prompts is not None and kept
    assert [shape for shape in kept if len(tokenizer) in shape] == []  # (positions, vocabulary) logits are recomputed
    logprobs.sum().backward()
    assert float(model.lm_head.weight.grad.abs().sum()) > 0
