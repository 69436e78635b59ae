"""Shared by the VeRL backend's tests: on-policy samples on the tiny model, logprobs computed plainly, VeRL's actor
worker started in this process, and agentbolt's own update (the reference VeRL's update is compared with)."""

from __future__ import annotations

import copy
import random
from functools import partial
from pathlib import Path
from typing import Any

import torch

from agentbolt.trainer.loss import policy_loss, token_weights
from agentbolt.types import LossConfig, Sample


@torch.no_grad()
def response_logprobs(model: Any, prompt: list[int], response: list[int], temperature: float = 1.0) -> list[float]:
    """Log-probabilities of ``response`` after ``prompt``: log_softmax(logits / temperature), one plain forward."""
    ids = torch.tensor([[*prompt, *response]])
    logits = model(input_ids=ids).logits[0].float() / temperature  # (L, V)
    logp = torch.log_softmax(logits, dim=-1)
    return [float(logp[len(prompt) - 1 + k, token]) for k, token in enumerate(response)]


def make_samples(
    model: Any,
    rows: list[tuple[str, str, int, int, float]],
    *,
    temperatures: list[float] | None = None,
    seed: int = 0,
) -> list[Sample]:
    """On-policy samples: ``rows`` of (group_id, rollout_id, prompt length, response length, advantage); a rollout
    named twice makes two transitions (multi-turn), the second one's prompt extending the first call's."""
    rng = random.Random(seed)
    vocab = model.config.vocab_size
    samples: list[Sample] = []
    last: dict[str, list[int]] = {}
    for i, (group, rollout, p, r, advantage) in enumerate(rows):
        earlier = last.get(rollout, [])
        prompt = [*earlier, *(rng.randrange(vocab) for _ in range(p))]
        response = [rng.randrange(vocab) for _ in range(r)]
        last[rollout] = [*prompt, *response]
        temperature = temperatures[i] if temperatures else 1.0
        samples.append(
            Sample(
                rollout_id=rollout,
                attempt_id=f"{rollout}-a",
                group_id=group,
                agent_name="solver",
                transition_index=sum(1 for s in samples if s.rollout_id == rollout),
                prompt_token_ids=prompt,
                response_token_ids=response,
                old_logprobs=response_logprobs(model, prompt, response, temperature),
                temperature=temperature,
                advantage=advantage,
                return_value=advantage,
                model_version=0,
            )
        )
    return samples


def reference_update(
    model: Any,
    samples: list[Sample],
    loss: LossConfig,
    *,
    lr: float,
    weight_decay: float = 0.01,
    ref_logprobs: list[list[float]] | None = None,
) -> tuple[Any, float]:
    """agentbolt's objective, one AdamW step on a copy of ``model`` (VeRL's optimizer defaults: weight decay 0.01,
    betas 0.9/0.999, gradient norm clipped to 1), with the KL term to ``ref_logprobs`` when given. Returns the
    updated copy and the loss."""
    trained = copy.deepcopy(model).train()
    optimizer = torch.optim.AdamW(trained.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.999))
    total = torch.zeros(())
    for i, (sample, weights) in enumerate(zip(samples, token_weights(samples, loss.aggregation), strict=True)):
        ids = torch.tensor([[*sample.prompt_token_ids, *sample.response_token_ids]])
        logits = trained(input_ids=ids).logits[0].float() / sample.temperature
        logp_all = torch.log_softmax(logits, dim=-1)
        start = len(sample.prompt_token_ids) - 1
        targets = torch.tensor(sample.response_token_ids)
        logp = logp_all[start : start + len(targets)].gather(-1, targets[:, None]).squeeze(-1)[None]  # (1, R)
        part, _ = policy_loss(
            logp,
            torch.tensor([sample.old_logprobs]),
            torch.tensor([sample.advantage]),
            torch.ones_like(logp),
            torch.tensor([weights]),
            clip_low=loss.clip_low,
            clip_high=loss.clip_high,
            ref_logprobs=torch.tensor([ref_logprobs[i]]) if ref_logprobs is not None else None,
            kl_coef=loss.kl_coef if ref_logprobs is not None else 0.0,
        )
        total = total + part
    total.backward()
    torch.nn.utils.clip_grad_norm_(trained.parameters(), 1.0)
    optimizer.step()
    return trained.eval(), float(total.detach())


def load_weights(model: Any, named_tensors: Any) -> Any:
    """A copy of ``model`` holding ``named_tensors`` ((name, tensor) pairs, as VeRL's weight export yields them)."""
    copied = copy.deepcopy(model)
    state = {name: tensor.detach().to("cpu", torch.float32) for name, tensor in named_tensors}
    missing, unexpected = copied.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    return copied.eval()


def start_actor(model_dir: Path, loss: Any, *, lr: float = 1e-3, overrides: dict[str, Any] | None = None) -> Any:
    """VeRL's ``ActorRolloutRefWorker`` (role actor, or actor + ref with a KL term) built and initialised in this
    process from agentbolt's config, with agentbolt's rollout_mean loss installed when that is the aggregation."""
    from verl.utils.config import omega_conf_to_dataclass

    from agentbolt.trainer.verl.config import build_config
    from agentbolt.trainer.verl.loss import rollout_mean_loss
    from agentbolt.trainer.verl.workers import GlooActorRolloutRefWorker
    from agentbolt.types import TrainerConfig

    config = build_config(str(model_dir), TrainerConfig(lr=lr), loss, overrides=overrides, cpu=True)
    worker = GlooActorRolloutRefWorker(config=config.actor_rollout_ref, role="actor")
    worker.init_model()
    if loss.aggregation == "rollout_mean":
        worker.set_loss_fn(partial(rollout_mean_loss, config=omega_conf_to_dataclass(config.actor_rollout_ref.actor)))
    return worker
