"""VeRL's config for a run: its own defaults, agentbolt's settings mapped onto its names, the user's overrides."""

from __future__ import annotations

import pytest

pytest.importorskip("verl", reason="needs agentbolt[verl]: bash scripts/setup.sh dev,train,verl")

from verl.utils.config import omega_conf_to_dataclass
from verl.workers.config import FSDPActorConfig

from agentbolt.errors import BadInput
from agentbolt.trainer.verl.config import build_config
from agentbolt.trainer.verl.trainer import check_verl_version
from agentbolt.types import LoraSettings, LossConfig, TrainerConfig


def test_agentbolts_settings_land_on_verls_names() -> None:
    trainer = TrainerConfig(lr=3e-6, seed=5, lora=LoraSettings(r=8, alpha=16, target_modules=["q_proj", "v_proj"]))
    loss = LossConfig(clip_low=0.1, clip_high=0.28, kl_coef=0.02, aggregation="seq_mean")
    ar = build_config("/models/m", trainer, loss).actor_rollout_ref
    assert ar.model.path == "/models/m"
    assert (ar.actor.optim.lr, ar.actor.fsdp_config.seed, ar.actor.data_loader_seed) == (3e-6, 5, 5)
    assert (ar.actor.clip_ratio_low, ar.actor.clip_ratio_high) == (0.1, 0.28)
    assert (ar.actor.use_kl_loss, ar.actor.kl_loss_coef, ar.actor.kl_loss_type) == (True, 0.02, "low_var_kl")
    assert ar.actor.loss_agg_mode == "seq-mean-token-mean"
    assert (ar.model.lora_rank, ar.model.lora_alpha, list(ar.model.target_modules)) == (8, 16, ["q_proj", "v_proj"])
    actor = omega_conf_to_dataclass(ar.actor)  # VeRL's own validation of the result
    assert isinstance(actor, FSDPActorConfig)


def test_verls_defaults_stay_and_agentbolts_own_defaults_apply() -> None:
    config = build_config("/m", TrainerConfig(), LossConfig())
    ar = config.actor_rollout_ref
    assert config.algorithm.rollout_correction.bypass_mode is True  # behaviour logprobs are pi_old
    assert ar.actor.use_dynamic_bsz is True and ar.rollout.name == "vllm"
    assert ar.actor.optim.weight_decay == 0.01 and ar.actor.ppo_epochs == 1  # VeRL's, untouched
    assert ar.model.use_remove_padding is True  # the CPU switches only with cpu=True
    cpu = build_config("/m", TrainerConfig(), LossConfig(), cpu=True).actor_rollout_ref
    assert cpu.model.use_remove_padding is False and cpu.model.override_config.attn_implementation == "sdpa"


def test_user_overrides_use_verls_names() -> None:
    overrides = {
        "actor_rollout_ref.actor.ppo_epochs": 2,
        "actor_rollout_ref.actor.optim.weight_decay": 0.0,
        "algorithm.rollout_correction.bypass_mode": False,
        "actor_rollout_ref.rollout.engine_kwargs.vllm.served_model_name": "policy",  # a free-form section
        "trainer.n_gpus_per_node": 4,
    }
    config = build_config("/m", TrainerConfig(verl=overrides), LossConfig())
    ar = config.actor_rollout_ref
    assert (ar.actor.ppo_epochs, ar.actor.optim.weight_decay) == (2, 0.0)
    assert config.algorithm.rollout_correction.bypass_mode is False
    assert ar.rollout.engine_kwargs.vllm.served_model_name == "policy"
    assert config.trainer.n_gpus_per_node == 4


@pytest.mark.parametrize(
    "key, words",
    [
        ("actor_rollout_ref.actor.optim.lr", "trainer.lr"),
        ("actor_rollout_ref.actor.loss_agg_mode", "rl.loss.aggregation"),
        ("actor_rollout_ref.actor.clip_ratio_high", "rl.loss.clip_high"),
        ("actor_rollout_ref.actor.ppo_epoch", "has no"),  # a typo is refused, not added
        ("actor_rollout_ref.actor.ppo_epochs.inner", "no section"),
    ],
)
def test_overrides_that_would_pass_silently_are_refused(key: str, words: str) -> None:
    with pytest.raises(BadInput, match=words):
        build_config("/m", TrainerConfig(verl={key: 1}), LossConfig())


def test_lora_dropout_has_no_verl_equivalent() -> None:
    with pytest.raises(BadInput, match="dropout"):
        build_config("/m", TrainerConfig(lora=LoraSettings(dropout=0.1)), LossConfig())


def test_only_verl_0_9_is_accepted() -> None:
    check_verl_version("0.9.1")
    for version in ("0.8.0", "0.10.0", "1.0", "dev"):
        with pytest.raises(BadInput, match=r"VeRL 0\.9"):
            check_verl_version(version)
