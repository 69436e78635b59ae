"""VeRL's own config for one agentbolt run: VeRL's defaults, agentbolt's settings mapped in, the user's overrides last.

The base is VeRL's composed ``ppo_trainer`` config (``verl/trainer/config``, the one ``python -m verl.trainer.main_ppo``
starts from), so every VeRL knob keeps its name and default. Onto it go, from agentbolt's settings:

========================================  =====================================================================
agentbolt                                 VeRL (under ``actor_rollout_ref``)
========================================  =====================================================================
the model (a Hugging Face directory)      ``model.path``
``trainer.lr``                            ``actor.optim.lr``
``trainer.seed``                          ``actor.fsdp_config.seed``, ``actor.data_loader_seed``, ``rollout.seed``
``trainer.lora`` (r, alpha, targets)      ``model.lora_rank``, ``model.lora_alpha``, ``model.target_modules``
``loss.clip_low`` / ``loss.clip_high``    ``actor.clip_ratio_low`` / ``actor.clip_ratio_high``
``loss.kl_coef``                          ``actor.use_kl_loss``, ``actor.kl_loss_coef``,
                                          ``actor.kl_loss_type: low_var_kl`` (k3, agentbolt's estimator; VeRL clamps
                                          each token's k3 at 10, agentbolt does not)
``loss.aggregation``                      ``actor.loss_agg_mode`` (token_mean, seq_mean; rollout_mean: none, see
                                          :mod:`agentbolt.trainer.verl.loss`)
========================================  =====================================================================

and three defaults of agentbolt's own, which the user may override: ``algorithm.rollout_correction.bypass_mode: true``
(the gateway's behaviour logprobs are the PPO ratio's old policy, as in the embedded trainer; false: VeRL recomputes
them), ``actor.use_dynamic_bsz: true`` (micro-batches by token budget, ``actor.ppo_max_token_len_per_gpu``, since an
agent's calls vary in length) and ``rollout.name: vllm``. Everything else is VeRL's default until the user's
``trainer.verl`` overrides (VeRL's dotted names) replace it; an override of a key agentbolt maps is refused, naming the
agentbolt setting to change instead, so one setting never has two sources.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from agentbolt.errors import BadInput
from agentbolt.trainer.verl.batch import loss_agg_mode
from agentbolt.types import LossConfig, TrainerConfig

_AR = "actor_rollout_ref"
OWNED: dict[str, str] = {
    f"{_AR}.model.path": "model",
    f"{_AR}.actor.optim.lr": "trainer.lr",
    f"{_AR}.actor.fsdp_config.seed": "trainer.seed",
    f"{_AR}.actor.data_loader_seed": "trainer.seed",
    f"{_AR}.rollout.seed": "trainer.seed",
    f"{_AR}.model.lora_rank": "trainer.lora.r",
    f"{_AR}.model.lora_alpha": "trainer.lora.alpha",
    f"{_AR}.model.target_modules": "trainer.lora.target_modules",
    f"{_AR}.actor.clip_ratio": "rl.loss.clip_low / clip_high",
    f"{_AR}.actor.clip_ratio_low": "rl.loss.clip_low",
    f"{_AR}.actor.clip_ratio_high": "rl.loss.clip_high",
    f"{_AR}.actor.use_kl_loss": "rl.loss.kl_coef",
    f"{_AR}.actor.kl_loss_coef": "rl.loss.kl_coef",
    f"{_AR}.actor.loss_agg_mode": "rl.loss.aggregation",
}
"""VeRL keys that agentbolt's settings decide -> the agentbolt setting to change instead."""

CPU_OVERRIDES: dict[str, Any] = {
    f"{_AR}.model.use_remove_padding": False,  # the packed path calls flash-attn's varlen kernels
    f"{_AR}.model.override_config.attn_implementation": "sdpa",  # VeRL's default is flash_attention_2
    f"{_AR}.actor.strategy": "fsdp2",  # FSDP2 (fully_shard) runs on a gloo CPU mesh
    f"{_AR}.actor.fsdp_config.strategy": "fsdp2",
    f"{_AR}.actor.fsdp_config.mixed_precision": {"param_dtype": "fp32", "reduce_dtype": "fp32", "buffer_dtype": "fp32"},
    f"{_AR}.actor.use_torch_compile": False,
    f"{_AR}.actor.fsdp_config.use_torch_compile": False,
    f"{_AR}.ref.strategy": "fsdp2",
    f"{_AR}.ref.fsdp_config.strategy": "fsdp2",
    f"{_AR}.ref.use_torch_compile": False,
    f"{_AR}.ref.fsdp_config.use_torch_compile": False,
    f"{_AR}.model.enable_gradient_checkpointing": False,
    "trainer.n_gpus_per_node": 1,  # one worker process: with the CPU platform, one "device" is one process
}
"""VeRL's own switches that let its actor update run on the CPU platform (:mod:`agentbolt.trainer.verl.cpu`)."""


def base_config() -> Any:
    """VeRL's composed ``ppo_trainer`` config (a struct ``DictConfig``), exactly as its trainer starts from it."""
    import verl
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    config_dir = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")
    if GlobalHydra.instance().is_initialized():  # another caller's hydra session: compose in a fresh one
        GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        return compose(config_name="ppo_trainer")


def _set(config: Any, key: str, value: Any) -> None:
    from omegaconf import OmegaConf

    OmegaConf.update(config, key, value, merge=False, force_add=True)


def build_config(
    model_path: str,
    trainer: TrainerConfig,
    loss: LossConfig,
    *,
    overrides: Mapping[str, Any] | None = None,
    cpu: bool = False,
) -> Any:
    """VeRL's config for this run, as the module docstring describes.

    Args:
        model_path: a local Hugging Face model directory (VeRL loads weights and tokenizer from it).
        trainer: agentbolt's trainer settings (``lr``, ``seed``, ``lora`` are read; the rest are the embedded
            trainer's); ``trainer.verl`` holds the user's overrides.
        loss: agentbolt's loss settings.
        overrides: more overrides applied after ``trainer.verl`` (tests); same rules.
        cpu: also apply :data:`CPU_OVERRIDES` (before the user's overrides, which may replace them).

    Raises:
        BadInput: an override names a key agentbolt maps, a key VeRL's config does not have at a level that
            requires it, or a LoRA setting VeRL's FSDP engine has no equivalent of.
    """

    config = base_config()
    ar = f"{_AR}"
    mapped: dict[str, Any] = {
        f"{ar}.model.path": model_path,
        f"{ar}.actor.optim.lr": trainer.lr,
        f"{ar}.actor.fsdp_config.seed": trainer.seed,
        f"{ar}.actor.data_loader_seed": trainer.seed,
        f"{ar}.rollout.seed": trainer.seed,
        f"{ar}.actor.clip_ratio": loss.clip_low,
        f"{ar}.actor.clip_ratio_low": loss.clip_low,
        f"{ar}.actor.clip_ratio_high": loss.clip_high,
        f"{ar}.actor.use_kl_loss": loss.kl_coef > 0,
        f"{ar}.actor.kl_loss_coef": loss.kl_coef,
        f"{ar}.actor.kl_loss_type": "low_var_kl",
        # rollout_mean runs agentbolt's loss (agentbolt.trainer.verl.loss); VeRL's mode is then unused
        f"{ar}.actor.loss_agg_mode": loss_agg_mode(loss.aggregation) or "token-mean",
    }
    if trainer.lora is not None:
        if trainer.lora.dropout:
            raise BadInput(
                "trainer.lora.dropout must be 0 with trainer.backend verl: VeRL's FSDP engine builds its LoRA "
                "adapter without dropout"
            )
        mapped.update(
            {
                f"{ar}.model.lora_rank": trainer.lora.r,
                f"{ar}.model.lora_alpha": trainer.lora.alpha,
                f"{ar}.model.target_modules": list(trainer.lora.target_modules),
            }
        )
    defaults: dict[str, Any] = {
        "algorithm.rollout_correction.bypass_mode": True,
        f"{ar}.actor.use_dynamic_bsz": True,
        f"{ar}.rollout.name": "vllm",
    }
    if cpu:
        defaults.update(CPU_OVERRIDES)
    user = {**trainer.verl, **(overrides or {})}
    for key in user:
        if key in OWNED:
            raise BadInput(f"trainer.verl sets {key!r}, which agentbolt maps from {OWNED[key]}: set that instead")

    for key, value in {**mapped, **defaults}.items():
        _set(config, key, value)
    for key, value in user.items():
        _override(config, key, value)
    return config


def _override(config: Any, key: str, value: Any) -> None:
    """Set one user override. A key VeRL's config lacks is refused (a typo must not pass silently) unless its parent
    is a free-form dict (no ``_target_``: ``model.override_config``, ``rollout.engine_kwargs.vllm``...)."""
    from omegaconf import DictConfig, OmegaConf

    parent_key, _, leaf = key.rpartition(".")
    parent = OmegaConf.select(config, parent_key) if parent_key else config
    if not isinstance(parent, DictConfig):
        raise BadInput(f"trainer.verl: {key!r} is not in VeRL's config ({parent_key or 'the root'} is no section)")
    free_form = "_target_" not in parent and parent is not config
    if leaf not in parent and not free_form:
        raise BadInput(f"trainer.verl: VeRL's config has no {key!r} (check the name against VeRL's ppo_trainer.yaml)")
    try:
        OmegaConf.update(config, key, value, merge=True, force_add=free_form)
    except Exception as exc:  # omegaconf's ValidationError and kin: name the key
        raise BadInput(f"trainer.verl: VeRL's config refuses {key!r} = {value!r}: {exc}") from exc
