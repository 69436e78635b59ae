"""``VerlTrainer``: the :class:`~agentbolt.trainer.policy.PolicyTrainer` whose updates run on VeRL's Ray workers.

One :meth:`VerlTrainer.step`, top to bottom: agentbolt's samples become VeRL's batch
(:func:`~agentbolt.trainer.verl.batch.samples_to_dataproto`, padded to whole data-parallel ranks and mini-batches),
VeRL's padding-free layout (``left_right_2_no_padding``); optionally VeRL's reference log-probs (KL) and recomputed
old log-probs (``bypass_mode: false``); then the worker group's ``update_actor`` (VeRL's FSDP actor: its micro-batching,
its loss or agentbolt's ``rollout_mean`` one, its optimizer and clipping); then the new weights go to the rollout
replicas through VeRL's ``CheckpointEngineManager.update_weights`` and the model version advances.

The workers are VeRL's ``ActorRolloutRefWorker`` (``verl.workers.engine_workers``) in one Ray resource pool: role
``actor`` or, with rollout replicas, ``actor_rollout`` (VeRL's hybrid engine: vLLM/SGLang servers in the same processes,
asleep during each update); with a KL penalty, a reference (``ref`` colocated, or in the same role with rollouts; with
LoRA the base model with the adapter off is the reference, as in VeRL). :attr:`VerlTrainer.rollout_urls` are the
replicas' OpenAI-compatible servers, for the gateway's :class:`~agentbolt.gateway.upstream.UpstreamBackend`, and
``on_new_version`` tells it which version they serve.

What has run where: on a CPU, through :mod:`agentbolt.trainer.verl.cpu` (``tests/trainer/verl``), the Ray worker
group (two FSDP2 ranks over gloo), VeRL's actor update, ``compute_log_prob``, LoRA with the base model as the KL
reference, checkpoints and resume. Not run anywhere yet (no GPU, no vLLM here): the rollout replicas (``rollout=True``),
VeRL's weight sync to them, VeRL's separate reference worker (it cannot start on the CPU: see ``__init__``'s error),
and the CUDA path itself.
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any, Literal, NamedTuple

from agentbolt.errors import BadInput
from agentbolt.trainer.checkpoint import STATE_FILE, checkpoint_name, find_checkpoint, list_checkpoints, read_state
from agentbolt.trainer.verl.batch import (
    logprob_tensordict,
    pad_rows,
    response_logprobs,
    samples_to_dataproto,
    update_tensordict,
)
from agentbolt.trainer.verl.config import build_config
from agentbolt.trainer.verl.loss import rollout_mean_loss
from agentbolt.types import LossConfig, Sample, TrainerCheckpoint, TrainerConfig

log = logging.getLogger(__name__)

SUPPORTED_VERL = (0, 9)
"""The VeRL minor release this backend is written and tested against (0.9.x; tested: 0.9.1)."""

VERL_CHECKPOINT_DIR = "verl"  # inside a step-NNNNNN checkpoint: VeRL's own actor checkpoint (FSDP shards, optimizer)

# VeRL's metric names -> agentbolt's (the embedded trainer's names; see Trainer.step)
_METRIC_NAMES = {
    "loss": "loss",
    "grad_norm": "grad_norm",
    "lr": "lr",
    "actor/pg_loss": "pg_loss",
    "actor/pg_clipfrac": "clip_fraction",
    "actor/ppo_kl": "approx_kl",  # VeRL's estimate: mean of (old - new) logprob (k1)
    "actor/approx_kl": "approx_kl",  # agentbolt's rollout_mean loss: k3, as the embedded trainer reports it
    "actor/ratio_mean": "ratio_mean",
    "actor/entropy_loss": "entropy",  # VeRL aggregates the policy's entropy with its loss_agg_mode
    "actor/entropy": "entropy",
    "actor/kl_ref": "kl_ref",
    "kl_loss": "kl_ref",
}


def check_verl_version(version: str) -> None:
    """Raise :class:`BadInput` unless ``version`` is a VeRL release this backend supports (0.9.x)."""
    parts = version.split(".")
    try:
        minor = (int(parts[0]), int(parts[1]))
    except (IndexError, ValueError):
        minor = (-1, -1)
    if minor != SUPPORTED_VERL:
        raise BadInput(
            f"trainer.backend verl needs VeRL 0.9.x, found {version}: bash scripts/setup.sh dev,train,verl "
            "(VeRL renames its worker and config classes between minor releases)"
        )


def model_directory(spec: str, work_dir: Path) -> Path:
    """A Hugging Face model directory for ``spec`` (VeRL loads from a path): ``spec`` itself when it is one, else the
    model (demo, tiny, GGUF...) saved under ``work_dir/model`` in that layout."""
    path = Path(spec).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        return path
    from agentbolt.models import load_tokenizer_and_model, save_checkpoint

    tokenizer, model = load_tokenizer_and_model(spec)
    return save_checkpoint(model, tokenizer, work_dir / "model")


class VerlTrainer:
    """Updates the policy with VeRL's FSDP workers on Ray; see the module docstring.

    Args:
        model: the policy model: a Hugging Face directory, or any agentbolt model spec (saved as one first).
        config: agentbolt's trainer settings: ``lr``, ``seed``, ``lora``, ``checkpoint_dir``, ``keep_checkpoints``
            and ``verl`` (VeRL's overrides, see :mod:`agentbolt.trainer.verl.config`).
        loss: agentbolt's loss settings (clip bounds, KL coefficient, aggregation).
        work_dir: where the model directory is written when ``model`` is not one (default: a temporary directory).
        rollout: start VeRL's rollout replicas (vLLM or SGLang, ``actor_rollout_ref.rollout.name``) and sync weights to
            them after each update. Needs GPUs and the rollout engine installed: **not exercised on a CPU**.
            False: the workers only train (rollouts served elsewhere).
        cpu: run VeRL on agentbolt's CPU platform (:mod:`agentbolt.trainer.verl.cpu`): tests and smoke runs.
        on_new_version: called with each new model version once the replicas serve it (the gateway's
            ``UpstreamBackend.set_model_version``).
        overrides: more VeRL overrides after ``config.verl`` (tests).

    Raises:
        BadInput: VeRL or Ray not installed or not VeRL 0.9, a refused override, or what VeRL cannot run on the CPU
            platform (``rollout``; a KL term without LoRA).
    """

    def __init__(
        self,
        model: str | Path,
        config: TrainerConfig,
        loss: LossConfig,
        *,
        work_dir: Path | None = None,
        rollout: bool = True,
        cpu: bool = False,
        on_new_version: Callable[[int], None] | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> None:
        try:
            import ray
            import verl
        except ImportError as exc:
            raise BadInput(
                f"trainer.backend verl needs the verl extra ({exc.name} is not installed): "
                "bash scripts/setup.sh dev,train,verl"
            ) from exc
        from omegaconf import OmegaConf
        from transformers import AutoConfig, AutoTokenizer
        from verl.utils.config import omega_conf_to_dataclass

        check_verl_version(verl.__version__)
        if rollout and cpu:
            raise BadInput("VeRL's rollout replicas (vLLM/SGLang) need GPUs: use rollout=False with cpu=True")
        if cpu and loss.kl_coef > 0 and config.lora is None:
            raise BadInput(
                "VeRL's reference worker cannot run on the CPU platform: its FSDP2 engine offloads a forward-only "
                "model with CPUOffloadPolicy(pin_memory=True) (verl/workers/engine/fsdp/transformer_impl.py:462), "
                "and pinning memory needs an accelerator; FSDP1 refuses CPU parameters with sync_module_states=True "
                "(line 444). On a CPU, a KL term works with LoRA (the base model is the reference)"
            )
        self.trainer_config, self.loss_config = config, loss
        self.on_new_version = on_new_version
        self.rollout = rollout
        self._tmp = None if work_dir is not None else tempfile.TemporaryDirectory(prefix="agentbolt-verl-")
        self.work_dir = Path(work_dir if work_dir is not None else self._tmp.name)  # type: ignore[union-attr]
        self.model_path = model_directory(str(model), self.work_dir)
        tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        hf_config = AutoConfig.from_pretrained(self.model_path)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_token_id = int(pad or 0)
        self.vocab_size = int(hf_config.vocab_size)
        from agentbolt.models import context_length

        self.max_context = context_length(hf_config)

        self.verl_config = build_config(str(self.model_path), config, loss, overrides=overrides, cpu=cpu)
        ar = self.verl_config.actor_rollout_ref
        self.actor_config = omega_conf_to_dataclass(ar.actor)
        self.bypass = bool(self.verl_config.algorithm.rollout_correction.bypass_mode)
        self.use_ref = loss.kl_coef > 0
        self.ref_in_actor = self.use_ref and int(ar.model.lora_rank) > 0  # LoRA: the base model is the reference

        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:
            init = OmegaConf.to_container(self.verl_config.ray_kwargs.ray_init, resolve=True)
            assert isinstance(init, dict)
            ray.init(**{k: v for k, v in init.items() if k == "num_cpus" and v is not None})
        self.workers = _start_workers(
            self.verl_config, rollout=rollout, use_ref=self.use_ref, ref_in_actor=self.ref_in_actor, cpu=cpu
        )
        self.actor_wg, self.ref_wg = self.workers.actor, self.workers.ref
        self.dp_size: int = self.actor_wg.world_size
        if loss.aggregation == "rollout_mean":  # no VeRL loss_agg_mode: agentbolt's loss inside VeRL's update
            self.actor_wg.set_loss_fn(partial(rollout_mean_loss, config=self.actor_config))
        self.steps_done = 0
        self.model_version = 0
        # VeRL's rollout servers (hybrid engine, in the actor's processes) and its weight sync to them: GPU only
        self.checkpoint_manager: Any = None
        self.rollout_addresses: list[str] = []
        if rollout:
            from verl.checkpoint_engine import CheckpointEngineManager
            from verl.workers.rollout.llm_server import LLMServerManager

            servers = LLMServerManager.create(
                config=self.verl_config, worker_group=self.actor_wg, rollout_resource_pool=self.workers.pool
            )
            self.rollout_addresses = list(servers.get_addresses())
            self.checkpoint_manager = CheckpointEngineManager(
                config=omega_conf_to_dataclass(ar.rollout.checkpoint_engine),
                actor_wg=self.actor_wg,
                replicas=servers.get_replicas(),
            )
            self.checkpoint_manager.sleep_replicas()  # VeRL starts them on dummy weights: the first sync brings ours
            self.checkpoint_manager.update_weights(0)
            self._announce()

    @property
    def rollout_urls(self) -> list[str]:
        """The rollout replicas' OpenAI-compatible base URLs (``http://host:port/v1``); empty without replicas."""
        return [f"http://{address}/v1" for address in self.rollout_addresses]

    @property
    def rollout_model(self) -> str:
        """The model name the replicas serve (vLLM's default: the model path VeRL started them with)."""
        engine_kwargs = self.verl_config.actor_rollout_ref.rollout.engine_kwargs
        name = engine_kwargs.get("vllm", {}).get("served_model_name")
        return str(name) if name else str(self.model_path)

    @property
    def logprobs_mode(self) -> Literal["raw", "processed"]:
        """The replicas' vLLM logprobs mode, from VeRL's ``actor_rollout_ref.rollout.logprobs_mode`` (VeRL's
        default ``processed_logprobs``): tells the gateway which calls' logprobs are the PPO ratio's."""
        mode = str(self.verl_config.actor_rollout_ref.rollout.get("logprobs_mode", "processed_logprobs"))
        return "processed" if mode.startswith("processed") else "raw"

    # --- one policy update ---------------------------------------------------------------------------

    def response_logprobs(self, samples: list[Sample]) -> list[list[float]]:
        """Each sample's response log-probs under the workers' current weights, at its temperature (VeRL's own
        forward, ``compute_log_prob``): to check an update, or to measure how far the behaviour policy has drifted."""
        data, _ = pad_rows(samples_to_dataproto(samples, self.pad_token_id), self.dp_size)
        td = logprob_tensordict(data)
        logprobs = response_logprobs(self.actor_wg.compute_log_prob(td), td)
        return [logprobs[i, : len(s.response_token_ids)].tolist() for i, s in enumerate(samples)]

    def skip_step(self) -> None:
        """Count a step that makes no update, so ``steps_done`` stays the training loop's step."""
        self.steps_done += 1

    def step(self, samples: list[Sample]) -> dict[str, float]:
        """One VeRL actor update from ``samples``, then the weights to the rollout replicas (model version + 1).

        Returns agentbolt's metric names (loss, clip_fraction, approx_kl, entropy, grad_norm, lr, kl_ref with a KL
        term, samples, response_tokens, rows, update_s, weight_push_s, step, model_version) and every VeRL metric
        as ``verl/<its name>``.

        Raises:
            BadInput: a sample is unusable (empty response, logprobs not one per token, too long...).
        """
        from verl.utils import tensordict_utils as tu

        from agentbolt.trainer.trainer import check_samples

        check_samples(samples, self.vocab_size, self.max_context)
        started = time.perf_counter()
        actor = self.verl_config.actor_rollout_ref.actor
        rows = len(samples)
        mini_batches = max(1, math.ceil(rows / int(actor.ppo_mini_batch_size)))  # VeRL's mini-batch size, in rows
        weights = self.loss_config.aggregation if self.loss_config.aggregation == "rollout_mean" else None
        data = samples_to_dataproto(samples, self.pad_token_id, aggregation=weights)
        data, _ = pad_rows(data, self.dp_size * mini_batches)
        if self.checkpoint_manager is not None:
            self.checkpoint_manager.sleep_replicas()  # hybrid engine: the replicas free the GPUs for the update
        if self.use_ref:  # reference log-probs for the KL term (LoRA: the actor with its adapter off)
            td = logprob_tensordict(data, no_lora_adapter=self.ref_in_actor)
            ref_wg: Any = self.ref_wg
            out = self.actor_wg.compute_log_prob(td) if self.ref_in_actor else ref_wg.compute_ref_log_prob(td)
            data.batch["ref_log_prob"] = response_logprobs(out, td)
        if not self.bypass:  # VeRL's decoupled mode: old log-probs recomputed under the current weights
            td = logprob_tensordict(data)
            data.batch["old_log_probs"] = response_logprobs(self.actor_wg.compute_log_prob(td), td)

        td = update_tensordict(
            data,
            rows=rows,
            mini_batches=mini_batches,
            epochs=int(actor.ppo_epochs),
            seed=int(actor.data_loader_seed) + self.steps_done,
            shuffle=bool(actor.shuffle),
        )
        output = self.actor_wg.update_actor(td)
        raw = tu.get(output, "metrics")
        self.steps_done += 1
        update_s = time.perf_counter() - started

        pushed = time.perf_counter()
        self._publish()
        weight_push_s = time.perf_counter() - pushed
        metrics = _agentbolt_metrics(raw)
        metrics.update(
            {
                "step": float(self.steps_done),
                "model_version": float(self.model_version),
                "samples": float(rows),
                "rows": float(len(data)),
                "mini_batches": float(mini_batches),
                "response_tokens": float(sum(len(s.response_token_ids) for s in samples)),
                "update_s": update_s,
                "weight_push_s": weight_push_s,
            }
        )
        log.info(
            "step %d: loss %.4f, grad norm %.3f",
            self.steps_done,
            metrics.get("loss", math.nan),
            metrics.get("grad_norm", math.nan),
        )
        return metrics

    def _publish(self) -> None:
        """The trained weights to the replicas through VeRL's own sync (which wakes them), then version + 1."""
        if self.checkpoint_manager is not None:
            self.checkpoint_manager.update_weights(self.steps_done)
        self.model_version += 1
        self._announce()

    def _announce(self) -> None:
        if self.on_new_version is not None:
            self.on_new_version(self.model_version)

    # --- checkpoints ---------------------------------------------------------------------------------

    def save(self, directory: str | Path | None = None) -> Path:
        """Write ``step-NNNNNN``: VeRL's actor checkpoint (``verl/``: its FSDP shards, optimizer and scheduler state,
        written by the workers, so on several nodes ``directory`` must be shared storage) and agentbolt's
        ``trainer_state.json``; keep the newest ``keep_checkpoints``. Returns the checkpoint's path.

        Raises:
            BadInput: no directory given and no ``checkpoint_dir`` configured.
        """
        target = directory if directory is not None else self.trainer_config.checkpoint_dir
        if target is None:
            raise BadInput("no checkpoint directory: give one or set trainer.checkpoint_dir")
        root = Path(target)
        root.mkdir(parents=True, exist_ok=True)
        final = root / checkpoint_name(self.steps_done)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=root))
        try:
            self.actor_wg.save_checkpoint(str(tmp / VERL_CHECKPOINT_DIR), global_step=self.steps_done)
            state = TrainerCheckpoint(
                step=self.steps_done,
                model_version=self.model_version,
                lora=self.trainer_config.lora is not None,
                config=self.trainer_config,
                loss=self.loss_config.model_dump(mode="json"),
                created_at=time.time(),
            )
            (tmp / STATE_FILE).write_text(state.model_dump_json(indent=2))
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)  # atomic: a crash never leaves a half checkpoint that looks whole
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        for old in list_checkpoints(root)[: -self.trainer_config.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def resume(self, path: str | Path) -> TrainerCheckpoint:
        """Load a checkpoint written by :meth:`save` (or a directory's newest) into the workers; the replicas get its
        weights and its model version is announced.

        Raises:
            BadInput: no checkpoint there, or it is not a VeRL backend checkpoint.
        """
        checkpoint = find_checkpoint(Path(path))
        if not (checkpoint / VERL_CHECKPOINT_DIR).is_dir():
            raise BadInput(f"{checkpoint} is not a checkpoint of the verl trainer backend (no {VERL_CHECKPOINT_DIR}/)")
        state = read_state(checkpoint)
        self.actor_wg.load_checkpoint(str(checkpoint / VERL_CHECKPOINT_DIR), del_local_after_load=False)
        self.steps_done, self.model_version = state.step, state.model_version
        if self.checkpoint_manager is not None:
            self.checkpoint_manager.update_weights(self.steps_done)
        self._announce()
        return state

    def close(self) -> None:
        """Stop the workers (and Ray, when this trainer started it)."""
        import ray

        for worker in self.workers.group.workers:
            ray.kill(worker)
        placement_groups: list[Any] = self.workers.pool.pgs or []
        for placement_group in placement_groups:  # give the resources back: the next trainer needs them
            ray.util.remove_placement_group(placement_group)
        self.workers.pool.pgs = None
        if self._owns_ray and ray.is_initialized():
            ray.shutdown()
        if self._tmp is not None:
            self._tmp.cleanup()


class _Workers(NamedTuple):
    pool: Any  # VeRL's RayResourcePool: one placement group per node
    group: Any  # the colocated RayWorkerGroup every role was spawned from
    actor: Any  # the actor role's worker group (update_actor, compute_log_prob, checkpoints, weight sync)
    ref: Any  # the reference's (compute_ref_log_prob), or None (no KL term, or LoRA: the actor with its adapter off)


def _start_workers(config: Any, *, rollout: bool, use_ref: bool, ref_in_actor: bool, cpu: bool) -> _Workers:
    """VeRL's ``ActorRolloutRefWorker`` roles in one Ray resource pool (``trainer.n_gpus_per_node`` x ``nnodes``
    processes), each role's ``init_model`` run. With rollouts and a reference, VeRL's combined role
    ``actor_rollout_ref``; without rollouts, ``actor`` and ``ref`` colocated in the same processes."""
    import ray
    from verl.single_controller.ray import RayClassWithInitArgs, RayResourcePool, RayWorkerGroup
    from verl.single_controller.ray.base import create_colocated_worker_cls

    env: dict[str, str] = {}
    if cpu:
        from verl.plugin.platform import get_platform, set_platform

        from agentbolt.trainer.verl.cpu import CPU_ENV, CPUPlatform

        if get_platform().device_name != "cpu":  # the driver too: VeRL sizes Ray resources by its platform
            set_platform(CPUPlatform())
        env = dict(CPU_ENV)
    per_node, nodes = int(config.trainer.n_gpus_per_node), int(config.trainer.nnodes)
    pool = RayResourcePool(process_on_nodes=[per_node] * nodes, use_gpu=not cpu, max_colocate_count=1)
    separate_ref = use_ref and not ref_in_actor and not rollout
    actor_role = "actor_rollout" if rollout else "actor"
    if use_ref and not ref_in_actor and rollout:
        actor_role = "actor_rollout_ref"
    remote: Any = ray.remote(_worker_class(cpu))
    classes = {actor_role: RayClassWithInitArgs(cls=remote, config=config.actor_rollout_ref, role=actor_role)}
    if separate_ref:
        classes["ref"] = RayClassWithInitArgs(cls=remote, config=config.actor_rollout_ref, role="ref")
    group = RayWorkerGroup(
        resource_pool=pool,
        ray_cls_with_init=create_colocated_worker_cls(class_dict=classes),
        device_name="cpu" if cpu else "cuda",
        use_gpu=not cpu,
        worker_env=env,
    )
    spawned = group.spawn(prefix_set=classes.keys())
    ref = spawned["ref"] if separate_ref else None
    if ref is not None:
        ref.init_model()
    actor = spawned[actor_role]
    actor.init_model()
    if actor_role == "actor_rollout_ref":
        ref = actor  # the reference lives in the actor's processes
    return _Workers(pool=pool, group=group, actor=actor, ref=ref)


def _worker_class(cpu: bool) -> type:
    """VeRL's ``ActorRolloutRefWorker``; on the CPU platform, one that opens its gloo group first (see
    :mod:`agentbolt.trainer.verl.cpu`: VeRL's own call cannot)."""
    from verl.workers.engine_workers import ActorRolloutRefWorker

    if not cpu:
        return ActorRolloutRefWorker
    from agentbolt.trainer.verl.workers import GlooActorRolloutRefWorker

    return GlooActorRolloutRefWorker


def _agentbolt_metrics(raw: Mapping[str, Any]) -> dict[str, float]:
    """VeRL's update metrics (lists: one value per micro-batch or mini-batch) -> their means, under agentbolt's
    names where one exists, and all of them as ``verl/<name>``."""
    out: dict[str, float] = {}
    for name, value in raw.items():
        values = value if isinstance(value, list) else [value]
        numbers = [float(v) for v in values if isinstance(v, (int, float)) or hasattr(v, "__float__")]
        if not numbers:
            continue
        mean = sum(numbers) / len(numbers)
        out[f"verl/{name}"] = mean
        if name in _METRIC_NAMES:
            out[_METRIC_NAMES[name]] = mean
    return out
