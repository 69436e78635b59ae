"""The policy of one run: its trainer and what serves its rollouts, chosen by the config's backends.

- ``trainer.backend: embedded`` + ``engine.backend: embedded`` (the default): the
  :class:`~agentbolt.trainer.trainer.Trainer` and the :class:`~agentbolt.engine.Engine` in this process; the engine
  decodes with the trainer's own model (paused for each update) or, with ``share_weights: false``, keeps a copy
  the trainer pushes weights to.
- ``trainer.backend: embedded`` + ``engine.backend: vllm``: the same trainer; rollouts on ``vllm serve`` replicas
  (``engine.vllm.urls``), sent each new version by :class:`~agentbolt.gateway.weight_sync.VllmWeightSync` over
  vLLM's documented HTTP API.
- ``trainer.backend: verl``: VeRL's Ray workers (FSDP actor) do the update; VeRL's rollout replicas serve the
  rollouts as the gateway's upstreams and get the weights through VeRL's own sync.

Whatever the row, agents call agentbolt's gateway and every span carries exact token ids and the model
version that served it: the gateway's backend is the embedded engine or an
:class:`~agentbolt.gateway.upstream.UpstreamBackend` whose version the trainer advances after each update.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentbolt.errors import BadInput
from agentbolt.types import TrainConfig

if TYPE_CHECKING:
    from agentbolt.gateway.backend import Backend
    from agentbolt.trainer.policy import PolicyTrainer

log = logging.getLogger(__name__)


@dataclass
class Policy:
    """A run's trainer and the gateway backend that serves its rollouts (see the module docstring)."""

    trainer: PolicyTrainer
    backend: Backend
    description: str  # one line for the run's console: what trains, what serves
    overlaps: bool = False  # rollouts can be generated while the trainer updates (weights of their own)
    _closers: list[Any] = field(default_factory=list)

    def close(self) -> None:
        """Close the trainer, then the engines this policy made (in reverse order)."""
        self.trainer.close()
        for close in reversed(self._closers):
            close()


def engine_settings(config: TrainConfig) -> dict[str, Any]:
    """The ``Engine`` arguments every embedded engine of a run shares (the policy's and the fixed models')."""
    return {
        "device": config.engine.device,
        "max_batch_size": config.engine.max_batch_size,
        "batch_wait_s": config.engine.batch_wait_s,
        "continuous_batching": config.engine.continuous_batching,
    }


def build_policy(config: TrainConfig, run_dir: Path) -> Policy:
    """The trainer and rollout backend ``config`` asks for (``trainer.backend``, ``engine.backend``).

    Raises:
        BadInput: a combination that does not exist (e.g. verl with an embedded engine setting it cannot use).
        ModelUnavailable: the model could not be loaded.
    """
    if config.trainer.backend == "verl":
        return _verl_policy(config, run_dir)
    if config.engine.backend == "vllm":
        return _vllm_policy(config, run_dir)
    return _embedded_policy(config)


def _embedded_policy(config: TrainConfig) -> Policy:
    from agentbolt.engine import Engine
    from agentbolt.gateway.backend import EngineBackend
    from agentbolt.models import default_device, load_tokenizer_and_model
    from agentbolt.trainer.trainer import Trainer

    cfg = config
    tokenizer, model = load_tokenizer_and_model(cfg.model)
    engine_kwargs = {**engine_settings(cfg), "dtype": cfg.engine.dtype}
    share = cfg.engine.share_weights and default_device(cfg.engine.device) == default_device(cfg.trainer.device)
    if share:
        trainer = Trainer(model, tokenizer, cfg.trainer, cfg.rl.loss)
        engine = Engine(trainer.model, tokenizer, **{**engine_kwargs, "device": str(trainer.device)}, shared=True)
        trainer.serve_with(engine)
        how = "one shared copy of the weights (generation pauses for each update)"
    else:
        engine = Engine(copy.deepcopy(model), tokenizer, **engine_kwargs)
        trainer = Trainer(model, tokenizer, cfg.trainer, cfg.rl.loss, engine=engine)
        how = "the engine's own copy of the weights, sent after each update"
    return Policy(
        trainer=trainer,
        backend=EngineBackend(engine, cfg.served_model),
        description=f"embedded trainer on {trainer.device}, embedded engine on {engine.device}: {how}",
        overlaps=not share,
        _closers=[engine.close],
    )


def _vllm_policy(config: TrainConfig, run_dir: Path) -> Policy:
    from agentbolt.gateway.upstream import UpstreamBackend
    from agentbolt.gateway.weight_sync import VllmWeightSync
    from agentbolt.models import load_tokenizer_and_model
    from agentbolt.trainer.trainer import Trainer

    cfg, settings = config, config.engine.vllm
    assert settings is not None  # TrainConfig's validator
    tokenizer, model = load_tokenizer_and_model(cfg.model)
    trainer = Trainer(model, tokenizer, cfg.trainer, cfg.rl.loss)
    lora = settings.weight_sync == "lora"
    backend = UpstreamBackend(
        settings.urls,
        tokenizer,
        cfg.served_model,
        upstream_model=settings.lora_name if lora else (settings.model or cfg.model),
        api_key=settings.api_key,
        logprobs_mode=settings.logprobs_mode,
    )
    sync = VllmWeightSync(
        backend,
        settings.weight_sync,
        settings.weights_dir or run_dir / "weights",
        lora_name=settings.lora_name if lora else None,
        api_key=settings.api_key,
    )
    try:
        if settings.weight_sync == "nccl":
            host, _, port = settings.nccl_master.rpartition(":")
            sync.attach_nccl(trainer.model, host, int(port))
        trainer.serve_with(sync)  # lora: the starting adapter goes to the replicas now
    except BaseException:
        sync.close()
        raise
    return Policy(
        trainer=trainer,
        backend=backend,
        description=f"embedded trainer on {trainer.device}, {len(settings.urls)} vLLM replica(s), "
        f"weights by {settings.weight_sync}",
        overlaps=True,
        _closers=[sync.close],
    )


def _verl_policy(config: TrainConfig, run_dir: Path) -> Policy:
    """VeRL's Ray workers update the policy; its rollout replicas serve the calls as the gateway's upstreams.

    Raises:
        BadInput: no GPU (VeRL's rollout replicas need one; the CPU path of ``VerlTrainer`` is for tests),
            an engine setting for another backend, or the verl extra missing.
    """
    from agentbolt.gateway.upstream import UpstreamBackend
    from agentbolt.models import load_tokenizer

    if config.engine.backend != "embedded" or config.engine.vllm is not None:
        raise BadInput(
            "with trainer.backend verl, VeRL's own rollout replicas serve the calls: leave engine.backend unset "
            "(set the replicas up in trainer.verl, e.g. actor_rollout_ref.rollout.*)"
        )
    if config.max_staleness:
        raise BadInput(
            "trainer.backend verl runs VeRL's hybrid engine: its replicas sleep while the actor updates, so "
            "collection cannot overlap the update; use max_staleness: 0"
        )
    import importlib.util

    import torch

    missing = [name for name in ("verl", "ray") if importlib.util.find_spec(name) is None]
    if missing:
        raise BadInput(
            f"trainer.backend verl needs the verl extra (missing: {', '.join(missing)}): "
            "bash scripts/setup.sh train,verl"
        )
    from agentbolt.trainer.verl import VerlTrainer

    if not torch.cuda.is_available():
        raise BadInput("trainer.backend verl needs GPUs: VeRL's rollout replicas (vLLM/SGLang) run on CUDA")
    trainer = VerlTrainer(config.model, config.trainer, config.rl.loss, work_dir=run_dir / "verl", rollout=True)
    try:
        backend = UpstreamBackend(
            trainer.rollout_urls,
            load_tokenizer(str(trainer.model_path)),
            config.served_model,
            upstream_model=trainer.rollout_model,
            logprobs_mode=trainer.logprobs_mode,
        )
    except BaseException:
        trainer.close()
        raise
    backend.set_model_version(trainer.model_version)
    trainer.on_new_version = backend.set_model_version  # VeRL's sync has reached the replicas: stamp the version
    return Policy(
        trainer=trainer,
        backend=backend,
        description=f"VeRL trainer (Ray workers), {len(trainer.rollout_urls)} VeRL rollout replica(s) as upstreams",
    )
