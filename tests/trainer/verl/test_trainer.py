"""``VerlTrainer`` on a local Ray cluster with agentbolt's CPU platform: VeRL's worker group (two FSDP2 ranks over
gloo), its update, checkpoints and resume, LoRA with the base model as the KL reference. Not here: the rollout
replicas and VeRL's weight sync to them (vLLM/SGLang on GPUs)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("verl", reason="needs agentbolt[verl]: bash scripts/setup.sh dev,train,verl")
ray = pytest.importorskip("ray", reason="needs agentbolt[verl]: bash scripts/setup.sh dev,train,verl")

from agentbolt.errors import BadInput  # noqa: E402
from agentbolt.trainer.policy import PolicyTrainer  # noqa: E402
from agentbolt.trainer.verl.trainer import VerlTrainer  # noqa: E402
from agentbolt.types import LoraSettings, LossConfig, TrainerConfig  # noqa: E402
from tests.trainer.verl.helpers import make_samples  # noqa: E402

ROWS = [
    ("g1", "r1", 6, 4, 1.0),
    ("g1", "r1", 3, 5, 1.0),
    ("g1", "r2", 9, 3, -1.0),
    ("g2", "r3", 4, 6, 0.5),
    ("g2", "r4", 7, 4, -0.5),
]


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


def test_cpu_platform_refuses_what_verl_cannot_run_there(tiny: tuple[Any, Any, Path]) -> None:
    with pytest.raises(BadInput, match="need GPUs"):
        VerlTrainer(tiny[2], TrainerConfig(), LossConfig(), rollout=True, cpu=True)
    with pytest.raises(BadInput, match=r"transformer_impl.py:462"):
        VerlTrainer(tiny[2], TrainerConfig(), LossConfig(kl_coef=0.1), rollout=False, cpu=True)


@pytest.mark.usefixtures("local_ray")
def test_step_save_resume_on_two_verl_ranks(tiny: tuple[Any, Any, Path], tmp_path: Path) -> None:
    _, model, model_dir = tiny
    versions: list[int] = []
    trainer = VerlTrainer(
        model_dir,
        TrainerConfig(lr=1e-3, keep_checkpoints=1),
        LossConfig(aggregation="rollout_mean"),
        rollout=False,
        cpu=True,
        on_new_version=versions.append,
        overrides={"trainer.n_gpus_per_node": 2},  # two worker processes: FSDP2 shards the model over both
    )
    try:
        assert isinstance(trainer, PolicyTrainer) and trainer.dp_size == 2
        samples = make_samples(model, ROWS)
        before = trainer.response_logprobs(samples)
        for got, sample in zip(before, samples, strict=True):  # VeRL's forward scores as the gateway did
            assert got == pytest.approx(sample.old_logprobs, abs=1e-4)

        metrics = trainer.step(samples)
        assert (trainer.steps_done, trainer.model_version, versions) == (1, 1, [1])
        assert metrics["rows"] == 6 and metrics["samples"] == 5  # padded to whole ranks
        for name in ("loss", "clip_fraction", "approx_kl", "entropy", "grad_norm", "lr"):
            assert name in metrics and metrics[name] == metrics[name], name  # present and not NaN
        assert metrics["lr"] == pytest.approx(1e-3) and metrics["grad_norm"] > 0
        after = trainer.response_logprobs(samples)
        for sample, old, new in zip(samples, before, after, strict=True):
            assert (sum(new) - sum(old)) * sample.advantage > 0, sample.rollout_id

        saved = trainer.save(tmp_path / "checkpoints")
        assert saved.name == "step-000001" and (saved / "verl").is_dir()
        trainer.skip_step()
        trainer.step(samples)
        moved = trainer.response_logprobs(samples)
        assert moved[0] != pytest.approx(after[0], abs=1e-4)
        state = trainer.resume(tmp_path / "checkpoints")  # the directory's newest
        assert (state.step, trainer.steps_done, trainer.model_version) == (1, 1, 1)
        assert versions[-1] == 1
        for got, want in zip(trainer.response_logprobs(samples), after, strict=True):
            assert got == pytest.approx(want, abs=1e-5)
        trainer.save(tmp_path / "checkpoints")
        assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-000001"]  # keep_checkpoints=1
    finally:
        trainer.close()


@pytest.mark.usefixtures("local_ray")
def test_lora_with_the_base_model_as_kl_reference(tiny: tuple[Any, Any, Path]) -> None:
    _, model, model_dir = tiny
    trainer = VerlTrainer(
        model_dir,
        TrainerConfig(lr=1e-2, lora=LoraSettings(r=4, alpha=8, target_modules=["q_proj", "v_proj"])),
        LossConfig(aggregation="token_mean", kl_coef=0.1),
        rollout=False,
        cpu=True,
    )
    try:
        samples = make_samples(model, ROWS)
        first = trainer.step(samples)
        assert first["kl_ref"] == pytest.approx(0.0, abs=1e-6)  # LoRA starts as the identity: policy = reference
        second = trainer.step(samples)
        assert second["kl_ref"] > 0 and second["loss"] == second["loss"]
        assert trainer.model_version == 2
    finally:
        trainer.close()
