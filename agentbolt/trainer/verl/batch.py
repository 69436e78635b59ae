"""agentbolt's samples -> VeRL's ``DataProto``: the batch VeRL's actor update reads.

One row per :class:`~agentbolt.types.Sample`, so an agent's second call in a rollout is a row of its own (multi-turn
rows are never merged: the gateway recorded each call's exact prompt, and merging would need every later prompt to
extend the earlier one token for token). The layout is the one VeRL's own rollout produces and
``verl.workers.utils.padding.left_right_2_no_padding`` expects:

* ``prompts`` (B, P): left-padded prompt ids; ``responses`` (B, R): right-padded response ids;
* ``input_ids`` (B, P+R) = prompts ++ responses; ``attention_mask`` (B, P+R): 1 on real tokens;
  ``position_ids`` (B, P+R): VeRL's ``compute_position_id_with_mask`` (0 on left padding, then 0, 1, 2, ...);
* ``response_mask`` (B, R): 1 on the response tokens the loss reads;
* ``rollout_log_probs`` (B, R): the gateway's behaviour logprobs, 0 on padding; also ``old_log_probs`` unless VeRL
  is asked to recompute them (its "decoupled" mode);
* ``advantages`` (B, R): agentbolt's advantage of the transition on every response token, 0 on padding; VeRL never
  recomputes them (nothing here is what its ``compute_advantage`` reads: no token-level rewards, no values);
* ``token_weights`` (B, R), when an aggregation is given: agentbolt's per-token loss weights
  (:func:`agentbolt.trainer.loss.token_weights`, summing to 1 over the batch), read by the ``rollout_mean`` loss;
* ``temperature`` (B,) only when the samples were drawn at different temperatures (VeRL's engine scales each row by
  its own); otherwise ``meta_info["temperature"]``, the scalar VeRL's trainer sets.

Non-tensor columns: ``uid`` (the GRPO group: ``group_id``, or the rollout when there is none), ``rollout_id``,
``attempt_id``, ``transition_index``, ``agent_name``. ``meta_info``: ``temperature`` (when shared) and
``global_token_num`` (tokens per row, which VeRL's workers read for throughput figures).

Loss aggregation: agentbolt's ``token_mean`` is VeRL's ``loss_agg_mode: token-mean`` and ``seq_mean`` is
``seq-mean-token-mean``; ``rollout_mean`` (every rollout alike, whatever its number of calls) has no VeRL
equivalent, so it runs agentbolt's own objective inside VeRL's update (:mod:`agentbolt.trainer.verl.loss`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from agentbolt.errors import BadInput
from agentbolt.trainer.loss import Aggregation, token_weights
from agentbolt.types import Sample

if TYPE_CHECKING:
    from verl import DataProto

VERL_LOSS_AGG_MODE: dict[str, str | None] = {
    "token_mean": "token-mean",
    "seq_mean": "seq-mean-token-mean",
    "rollout_mean": None,  # no VeRL mode: agentbolt's loss runs in VeRL's update (see agentbolt.trainer.verl.loss)
}
"""agentbolt's ``LossConfig.aggregation`` -> VeRL's ``actor.loss_agg_mode`` (None: no equivalent)."""


def loss_agg_mode(aggregation: Aggregation) -> str | None:
    """VeRL's ``loss_agg_mode`` for agentbolt's ``aggregation``, or None where VeRL has none (``rollout_mean``).

    Raises:
        BadInput: an aggregation agentbolt does not know.
    """
    if aggregation not in VERL_LOSS_AGG_MODE:
        raise BadInput(f"unknown loss aggregation {aggregation!r}: use token_mean, seq_mean or rollout_mean")
    return VERL_LOSS_AGG_MODE[aggregation]


def _check(samples: Sequence[Sample]) -> None:
    if not samples:
        raise BadInput("no samples to convert: the batch is empty")
    for i, s in enumerate(samples):
        where = f"sample {i} (rollout {s.rollout_id}, transition {s.transition_index})"
        if not s.prompt_token_ids or not s.response_token_ids:
            raise BadInput(f"{where} has an empty prompt or response: VeRL's rows need both")
        if len(s.old_logprobs) != len(s.response_token_ids):
            raise BadInput(
                f"{where} has {len(s.old_logprobs)} old_logprobs for {len(s.response_token_ids)} response tokens"
            )
        if not math.isfinite(s.advantage) or not all(math.isfinite(x) for x in s.old_logprobs):
            raise BadInput(f"{where} has a non-finite advantage or old logprob")


def samples_to_dataproto(
    samples: Sequence[Sample],
    pad_token_id: int,
    *,
    aggregation: Aggregation | None = None,
    recompute_old_logprobs: bool = False,
) -> DataProto:
    """VeRL's training batch for ``samples``: one row per sample, laid out as the module docstring says.

    Args:
        samples: the update's samples (advantages already computed by agentbolt).
        pad_token_id: the id written into padding positions (masked out everywhere).
        aggregation: also store agentbolt's per-token loss weights for this aggregation (``token_weights``).
        recompute_old_logprobs: leave ``old_log_probs`` out, for VeRL to recompute under the current weights
            (``rollout_log_probs`` stays the behaviour policy); False: the behaviour logprobs are ``old_log_probs``.

    Raises:
        BadInput: no samples, an empty prompt or response, logprobs not one per response token, or a
            non-finite number.
    """
    import numpy as np
    import torch
    from tensordict import TensorDict
    from verl import DataProto
    from verl.utils.model import compute_position_id_with_mask

    _check(samples)
    rows = len(samples)
    prompt_len = max(len(s.prompt_token_ids) for s in samples)
    response_len = max(len(s.response_token_ids) for s in samples)

    prompts = torch.full((rows, prompt_len), pad_token_id, dtype=torch.long)
    prompt_mask = torch.zeros((rows, prompt_len), dtype=torch.long)
    responses = torch.full((rows, response_len), pad_token_id, dtype=torch.long)
    response_mask = torch.zeros((rows, response_len), dtype=torch.long)
    logprobs = torch.zeros((rows, response_len), dtype=torch.float32)
    for i, s in enumerate(samples):
        p, r = len(s.prompt_token_ids), len(s.response_token_ids)
        prompts[i, prompt_len - p :] = torch.tensor(s.prompt_token_ids)  # left padding
        prompt_mask[i, prompt_len - p :] = 1
        responses[i, :r] = torch.tensor(s.response_token_ids)  # right padding
        response_mask[i, :r] = 1
        logprobs[i, :r] = torch.tensor(s.old_logprobs, dtype=torch.float32)
    attention_mask = torch.cat([prompt_mask, response_mask], dim=1)  # (B, P+R)
    advantage = torch.tensor([s.advantage for s in samples], dtype=torch.float32)  # (B,)

    tensors: dict[str, Any] = {
        "prompts": prompts,
        "responses": responses,
        "input_ids": torch.cat([prompts, responses], dim=1),
        "attention_mask": attention_mask,
        "position_ids": compute_position_id_with_mask(attention_mask),
        "response_mask": response_mask,
        "rollout_log_probs": logprobs,
        "advantages": advantage.unsqueeze(-1) * response_mask,  # (B, R): the transition's advantage per token
    }
    if not recompute_old_logprobs:
        tensors["old_log_probs"] = logprobs.clone()
    if aggregation is not None:
        weights = torch.zeros((rows, response_len), dtype=torch.float32)
        for i, w in enumerate(token_weights(samples, aggregation)):
            weights[i, : len(w)] = torch.tensor(w, dtype=torch.float32)
        tensors["token_weights"] = weights
    temperatures = {s.temperature for s in samples}
    meta_info: dict[str, Any] = {"global_token_num": attention_mask.sum(-1).tolist()}
    if len(temperatures) == 1:
        meta_info["temperature"] = float(next(iter(temperatures)))
    else:  # VeRL's engine takes one temperature per row as a tensor
        tensors["temperature"] = torch.tensor([s.temperature for s in samples], dtype=torch.float32)

    def column(values: list[Any]) -> Any:
        return np.array(values, dtype=object)

    non_tensors = {
        "uid": column([s.group_id if s.group_id is not None else f"rollout:{s.rollout_id}" for s in samples]),
        "rollout_id": column([s.rollout_id for s in samples]),
        "attempt_id": column([s.attempt_id for s in samples]),
        "transition_index": column([s.transition_index for s in samples]),
        "agent_name": column([s.agent_name for s in samples]),
    }
    return DataProto(batch=TensorDict(tensors, batch_size=[rows]), non_tensor_batch=non_tensors, meta_info=meta_info)


def pad_rows(data: DataProto, divisor: int) -> tuple[DataProto, int]:
    """Pad ``data`` with copies of its first rows to a multiple of ``divisor`` (VeRL splits a batch evenly over its
    data-parallel ranks and mini-batches); the copies carry no loss: their response mask, advantages and token
    weights are zero. Returns the padded batch and the number of rows added."""
    from verl.protocol import pad_dataproto_to_divisor

    rows = len(data)
    padded, added = pad_dataproto_to_divisor(data, divisor)
    if added:
        for key in ("response_mask", "advantages", "token_weights"):
            if key in padded.batch.keys():
                padded.batch[key][rows:] = 0
        if "global_token_num" in padded.meta_info:
            padded.meta_info["global_token_num"] = padded.batch["attention_mask"].sum(-1).tolist()
    return padded, added


def update_tensordict(data: DataProto, *, rows: int, mini_batches: int, epochs: int, seed: int, shuffle: bool) -> Any:
    """``data`` in VeRL's padding-free layout with the settings of ``update_actor``: ``num_mini_batch`` optimizer
    steps per epoch, ``epochs`` passes, the seq-mean denominator (``global_batch_size``: the real rows, not padding,
    of one mini-batch), entropy computed, and agentbolt's weight scale for the ``rollout_mean`` loss.

    Args:
        data: the (padded) batch from :func:`samples_to_dataproto` / :func:`pad_rows`.
        rows: real rows in it (before padding).
        mini_batches: optimizer steps per epoch (``data`` divides evenly by ``mini_batches`` x ranks).
        epochs, seed, shuffle: VeRL's ``ppo_epochs``, ``data_loader_seed``, ``shuffle``.
    """
    from verl.utils import tensordict_utils as tu
    from verl.workers.utils.padding import left_right_2_no_padding

    from agentbolt.trainer.verl.loss import WEIGHT_SCALE

    td = left_right_2_no_padding(data.to_tensordict())
    tu.assign_non_tensor(
        td,
        calculate_entropy=True,
        compute_loss=True,
        num_mini_batch=mini_batches,
        global_batch_size=rows / mini_batches,
        epochs=epochs,
        seed=seed,
        dataloader_kwargs={"shuffle": shuffle},
        **{WEIGHT_SCALE: float(mini_batches)},
    )
    return td


def logprob_tensordict(data: DataProto, *, no_lora_adapter: bool = False) -> Any:
    """``data`` in VeRL's padding-free layout for ``compute_log_prob`` / ``compute_ref_log_prob`` (no loss, no
    entropy); ``no_lora_adapter``: with the LoRA adapter off (the base model as the reference)."""
    from verl.utils import tensordict_utils as tu
    from verl.workers.utils.padding import left_right_2_no_padding

    td = left_right_2_no_padding(data.to_tensordict())
    tu.assign_non_tensor(td, calculate_entropy=False, compute_loss=False)
    if no_lora_adapter:
        tu.assign_non_tensor(td, no_lora_adapter=True)
    return td


def response_logprobs(output: Any, td: Any) -> Any:
    """The (B, R) response log-probs of a ``compute_log_prob`` output for the batch ``td`` it was given."""
    from verl.utils import tensordict_utils as tu
    from verl.workers.utils.padding import no_padding_2_padding

    return no_padding_2_padding(tu.get(output, "log_probs"), td).float()
