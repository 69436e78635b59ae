"""agentbolt's ``rollout_mean`` objective inside VeRL's actor update, which has no such ``loss_agg_mode``.

VeRL's update takes any loss function through ``set_loss_fn`` (its workers call
``loss_fn(model_output=..., data=..., dp_group=...)`` per micro-batch, after their own forward).
:func:`rollout_mean_loss` is agentbolt's :func:`~agentbolt.trainer.loss.policy_loss` on the per-token weights the
batch carries (``token_weights``: every rollout weighs the same, whatever its number of calls and tokens, summing to 1
over the batch):

* ``weights * num_mini_batches``: the weights were computed over the whole batch and VeRL splits it into mini-batches
  after the fact, so each mini-batch is scaled to carry a loss of about one batch's; exact for one mini-batch per step
  (agentbolt's default), approximate otherwise (a mini-batch's share of the rollouts' tokens varies);
* ``* dp_size``: FSDP averages gradients over the data-parallel ranks, each holding part of the batch, so each rank's
  sum is scaled up to make the average the sum over the whole mini-batch (VeRL's own ``agg_loss`` does the same).

The KL term is agentbolt's k3 to VeRL's reference log-probs (``ref_log_prob``) weighted like the policy term, and an
``actor.entropy_coeff`` other than 0 subtracts the same-weighted entropy, as VeRL's ``ppo_loss`` does.
"""

from __future__ import annotations

from typing import Any

import torch

from agentbolt.trainer.loss import policy_loss

WEIGHT_SCALE = "agentbolt_weight_scale"
"""Non-tensor key of the update batch: the factor on ``token_weights`` (the number of mini-batches per epoch)."""


def rollout_mean_loss(config: Any, model_output: Any, data: Any, dp_group: Any = None) -> tuple[torch.Tensor, dict]:
    """One micro-batch's loss and metrics, in VeRL's loss-function form (bind ``config`` with ``functools.partial``).

    Args:
        config: VeRL's actor config (``ActorConfig``): clip ratios, ``use_kl_loss``/``kl_loss_coef``,
            ``entropy_coeff``.
        model_output: VeRL's engine output: ``log_probs`` (and ``entropy`` when asked for), without padding.
        data: the micro-batch (a TensorDict): ``response_mask``, ``old_log_probs``, ``advantages``,
            ``token_weights``, ``ref_log_prob`` with a KL term, ``dp_size`` and :data:`WEIGHT_SCALE`.
        dp_group: VeRL's data-parallel group (unused: the scaling above needs only its size).

    Returns:
        The loss to back-propagate and metrics named as VeRL names its own (``actor/pg_loss``,
        ``actor/pg_clipfrac``) plus ``actor/approx_kl`` (k3 to the behaviour policy), ``actor/ratio_mean``,
        ``actor/kl_ref`` and ``actor/entropy``.
    """
    from verl.utils import tensordict_utils as tu
    from verl.utils.metric import AggregationType, Metric
    from verl.workers.utils.padding import no_padding_2_padding

    log_prob = no_padding_2_padding(model_output["log_probs"], data)  # (B, R)
    entropy = model_output.get("entropy", None)
    fields = ["response_mask", "old_log_probs", "advantages", "token_weights"]
    use_kl = bool(config.use_kl_loss)
    if use_kl:
        fields.append("ref_log_prob")
    batch = data.select(*fields).to_padded_tensor()
    mask = batch["response_mask"].to(log_prob.dtype)  # (B, R)
    scale = float(data["dp_size"]) * float(tu.get_non_tensor_data(data=data, key=WEIGHT_SCALE, default=1.0))
    weights = batch["token_weights"].to(log_prob.dtype) * scale  # (B, R)
    advantage = batch["advantages"][:, 0]  # (B,) agentbolt's advantage is one per transition: any response token
    loss, parts = policy_loss(
        log_prob,
        batch["old_log_probs"],
        advantage,
        mask,
        weights,
        clip_low=float(config.clip_ratio_low),
        clip_high=float(config.clip_ratio_high),
        ref_logprobs=batch["ref_log_prob"] if use_kl else None,
        kl_coef=float(config.kl_loss_coef) if use_kl else 0.0,
    )
    metrics: dict[str, Any] = {
        "actor/pg_loss": Metric(value=loss.detach().item(), aggregation=AggregationType.SUM),
        "actor/pg_clipfrac": parts["clip_fraction"],
        "actor/approx_kl": parts["approx_kl"],
        "actor/ratio_mean": parts["ratio_mean"],
    }
    if "kl_ref" in parts:
        metrics["actor/kl_ref"] = parts["kl_ref"]
    if entropy is not None:
        entropy = no_padding_2_padding(entropy, data)  # (B, R)
        weighted = (weights * mask * entropy).sum()
        with torch.no_grad():
            metrics["actor/entropy"] = float(weighted / (weights * mask).sum().clamp_min(1e-12))
        if config.entropy_coeff:
            loss = loss - float(config.entropy_coeff) * weighted
    return loss, metrics
