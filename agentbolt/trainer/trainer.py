"""The embedded policy trainer: one PPO-style update from a batch of samples, then the new weights to the engine.

:meth:`Trainer.step` (its body: ``Trainer._step``) reads top to bottom: the samples are packed into
micro-batches by a token budget (:mod:`agentbolt.trainer.micro_batches`; samples sharing a prompt run it once,
``config.share_prompts``), each micro-batch runs forward and yields the log-probabilities of its response tokens
(:func:`token_logprobs`: the hidden state before token t predicts it, projected onto the vocabulary a chunk at a
time, scaled by the temperature it was sampled at), the policy's entropy, and
the PPO-clip loss against the behaviour log-probabilities the gateway recorded; gradients accumulate
over the micro-batches (the per-token weights are computed over the whole batch, so the sum of
micro-batch losses *is* the batch loss), then the gradient norm is clipped and the optimizer steps.
The new weights go to the engine as model version + 1 (for LoRA, the adapter merged into full weights
on the fly; the adapter keeps training) — or, when the engine shares the trainer's model (``Engine(...,
shared=True)``, one copy of the weights in memory), the engine is paused between batches for the update and
resumed on the new version: nothing is copied.

Trained weights and optimizer state are float32; on CUDA (or with ``dtype: bfloat16``) the forward runs under
bf16 autocast. With LoRA and bf16 the frozen base weights are stored in bf16 too (only the adapter trains, in
float32), which halves the base model's memory.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import copy
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol, cast

import torch
from safetensors.torch import load_file

from agentbolt.errors import BadInput
from agentbolt.models import context_length, default_device, load_tokenizer_and_model, missing_weights, save_checkpoint
from agentbolt.trainer.checkpoint import (
    OPTIMIZER_FILE,
    RNG_FILE,
    find_checkpoint,
    read_state,
    rng_state,
    set_rng_state,
    write_checkpoint,
)
from agentbolt.trainer.loss import policy_loss, token_weights
from agentbolt.trainer.micro_batches import DecoderHead, MicroBatch, pack_micro_batches, split_model, token_logprobs
from agentbolt.trainer.rng import TrainerRandom
from agentbolt.types import LossConfig, Sample, TrainerCheckpoint, TrainerConfig

log = logging.getLogger(__name__)

_ADAPTER = "default"  # PEFT's name for the one adapter we train
# Mixed into one mini-batch shuffle seed per (seed, step, epoch): distinct primes keep neighbouring runs, steps
# and epochs apart, and a resumed run recomputes the same order from the step count alone (no stored state).
_SEED_MIX_RUN, _SEED_MIX_STEP = 1_000_003, 1_009


class WeightSink(Protocol):
    """Where the trainer sends each new version of the weights: an :class:`agentbolt.engine.Engine`, or anything
    that serves them the same way (``agentbolt.gateway.weight_sync.VllmWeightSync`` for vLLM replicas).

    A sink whose ``takes_adapters`` is true is sent a LoRA trainer's adapter instead of merged full weights:
    ``update_adapter(write, version)``, where ``write(directory)`` saves the adapter in PEFT's layout."""

    @property
    def model_version(self) -> int:
        """The version of the weights it serves (once pending updates are applied)."""
        ...

    def update_weights(self, state_dict: Mapping[str, torch.Tensor], version: int) -> concurrent.futures.Future[int]:
        """Take ``state_dict`` (full weights, the plain model's names) as ``version``; the future resolves once
        it serves them."""
        ...


def check_samples(samples: list[Sample], vocab_size: int, max_context: int) -> None:
    """Raise :class:`BadInput` naming the first sample the trainer cannot use, and why."""
    if not samples:
        raise BadInput("no samples to train on: the batch is empty")
    for i, s in enumerate(samples):
        where = f"sample {i} (rollout {s.rollout_id}, transition {s.transition_index})"
        if not s.prompt_token_ids:
            raise BadInput(f"{where} has an empty prompt: the first response token needs a token to follow")
        if not s.response_token_ids:
            raise BadInput(f"{where} has an empty response: nothing to train on; drop such transitions first")
        if len(s.old_logprobs) != len(s.response_token_ids):
            raise BadInput(
                f"{where} has {len(s.old_logprobs)} old_logprobs for {len(s.response_token_ids)} response tokens: "
                "the behaviour log-probabilities must be one per response token"
            )
        n = len(s.prompt_token_ids) + len(s.response_token_ids)
        if n > max_context:
            raise BadInput(f"{where} has {n} tokens, more than the model's context of {max_context}")
        ids = [*s.prompt_token_ids, *s.response_token_ids]
        if min(ids) < 0 or max(ids) >= vocab_size:
            raise BadInput(f"{where} holds token ids outside the vocabulary [0, {vocab_size})")
        if not math.isfinite(s.advantage) or not all(math.isfinite(x) for x in s.old_logprobs):
            raise BadInput(f"{where} has a non-finite advantage or old logprob")


# --- the trainer -----------------------------------------------------------------------------------


class Trainer:
    """Updates the policy from batches of samples and hands each new version to the engine.

    Args:
        model: a transformers causal LM (the trainer's own copy: not the engine's model object).
            With ``config.lora`` it is wrapped in a PEFT LoRA adapter here.
        tokenizer: its tokenizer (padding id; saved with full-model checkpoints).
        config: optimiser, micro-batching, LoRA, device and checkpoint settings.
        loss: PPO-clip bounds, KL coefficient, loss aggregation.
        engine: where new weights go after each update (:class:`WeightSink`; the embedded
            :class:`agentbolt.engine.Engine`, or one made later over :attr:`model` with ``shared=True`` and
            given with :meth:`serve_with`).
        on_new_version: called with the new model version once the engine serves it (e.g. to post a
            ModelVersion record to the server).

    Its random numbers (LoRA initialisation, dropout) come from streams of its own seeded with ``config.seed``
    (:class:`~agentbolt.trainer.rng.TrainerRandom`): constructing or stepping a trainer leaves the process's
    global generators as they were.

    Raises:
        BadInput: the engine holds the very same model object without being a shared engine.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        config: TrainerConfig,
        loss: LossConfig,
        engine: WeightSink | None = None,
        on_new_version: Callable[[int], None] | None = None,
    ) -> None:
        if engine is not None and getattr(engine, "model", None) is model and not getattr(engine, "shared", False):
            raise BadInput(
                "the trainer and the engine share one model object: give the engine its own copy, or make it "
                "with shared=True over the trainer's model and pass it to serve_with()"
            )
        self.config, self.loss_config = config, loss
        self.tokenizer, self.engine, self.on_new_version = tokenizer, engine, on_new_version
        self.device = default_device(config.device)
        bf16 = config.dtype == "bfloat16" or (config.dtype == "auto" and self.device.type == "cuda")
        self.autocast_dtype = torch.bfloat16 if bf16 else None
        self._random = TrainerRandom(config.seed, self.device)

        self.reference: Any | None = None  # frozen reference for the KL penalty; None with LoRA = adapter off
        with self._random.active():  # a LoRA adapter starts from random weights
            # The weights that train are float32; LoRA's frozen base need not be when the compute is bf16.
            frozen_bf16 = config.lora is not None and bf16
            model = model.to(self.device, dtype=torch.bfloat16 if frozen_bf16 else torch.float32)
            if loss.kl_coef > 0:
                if config.reference_model is not None:
                    self.reference = load_tokenizer_and_model(config.reference_model)[1].to(self.device)
                elif config.lora is None:  # frozen, used under autocast only: bf16 storage is enough there
                    self.reference = copy.deepcopy(model).to(dtype=torch.bfloat16 if bf16 else torch.float32)
                if self.reference is not None:
                    self.reference.requires_grad_(False).eval()
            if config.lora is not None:
                from peft import LoraConfig, get_peft_model

                lora = config.lora
                peft_config = LoraConfig(
                    r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=list(lora.target_modules)
                )
                model = get_peft_model(model, peft_config)
        self.model = model
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            self.params, lr=config.lr, betas=config.betas, eps=config.eps, weight_decay=config.weight_decay
        )
        self.vocab_size: int = model.config.vocab_size
        self.max_context = context_length(model.config)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_token_id: int = int(pad or 0)
        # Scoring through decoder + output layer in chunks, and shared prompts, where this model allows them.
        self.split = split_model(model, self.autocast_dtype)
        self.reference_split = (
            self.split if self.reference is None else split_model(self.reference, self.autocast_dtype)
        )
        splits = [self.split] + ([self.reference_split] if loss.kl_coef > 0 else [])
        self.share_prompts = config.share_prompts and all(s is not None and s.shares_prompts for s in splits)
        self.steps_done = 0
        self.model_version: int = engine.model_version if engine is not None else 0

    def serve_with(self, engine: WeightSink) -> None:
        """Send new weights to ``engine`` from now on; an engine made with ``shared=True`` over :attr:`model`
        is paused for each update instead (the trainer's model version becomes its version)."""
        self.engine = engine
        if self._shares_engine:
            self._engine_version(self.model_version)
        elif self._sends_adapter:  # the replicas have no adapter yet: send the starting one
            self._publish(self.model_version)
        else:
            self.model_version = engine.model_version

    @property
    def _sends_adapter(self) -> bool:
        return self.config.lora is not None and getattr(self.engine, "takes_adapters", False)

    @property
    def _shares_engine(self) -> bool:
        return getattr(self.engine, "shared", False) and getattr(self.engine, "model", None) is self.model

    @contextlib.contextmanager
    def _engine_held(self) -> Iterator[None]:
        """While the weights change in place: a shared engine stands between batches, then serves the new
        version (the trainer's :attr:`model_version` when the block ends)."""
        if not self._shares_engine:
            yield
            return
        engine = cast(Any, self.engine)
        hold = engine.pause()
        try:
            yield
        finally:
            engine.resume(hold, self.model_version)

    def _engine_version(self, version: int) -> None:
        engine = cast(Any, self.engine)
        engine.resume(engine.pause(), version)

    def close(self) -> None:
        """Release what the trainer holds beyond memory (nothing, for the embedded trainer)."""

    # --- one policy update -------------------------------------------------------------------------

    def skip_step(self) -> None:
        """Count a step that makes no update (its batch had nothing to learn from), so ``steps_done``
        stays the training loop's step: the step a checkpoint resumes from and the ``step`` metric."""
        self.steps_done += 1

    def step(self, samples: list[Sample]) -> dict[str, float]:
        """One policy update from ``samples``, then the new weights to the engine (model version + 1).

        Returns metrics: loss, clip_fraction, approx_kl, kl_ref (with a KL penalty), ratio_mean, entropy,
        grad_norm, lr, tokens (the samples' prompt + response tokens), response_tokens, forward_tokens (the
        tokens the model ran: a shared prompt once per micro-batch), tokens_per_s (samples' tokens per second),
        micro_batches, optimizer_steps, samples,
        update_s, weight_push_s, step, model_version, and version_lag_mean/max (model version at this
        update minus each sample's model version; when the samples carry one).

        Raises:
            BadInput: a sample is unusable (empty response, logprobs not one per token, too long...).
        """
        check_samples(samples, self.vocab_size, self.max_context)
        with self._engine_held(), self._random.active():  # dropout draws from the trainer's own random streams
            return self._step(samples)

    def _step(self, samples: list[Sample]) -> dict[str, float]:
        cfg, loss_cfg = self.config, self.loss_config
        started = time.perf_counter()
        lr = cfg.lr * min(1.0, (self.steps_done + 1) / cfg.warmup_steps) if cfg.warmup_steps else cfg.lr
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.model.train()

        sums: dict[str, float] = {}  # metric -> sum over micro-batches (weighted as noted)
        tokens = response_tokens = forward_tokens = micro_batches = optimizer_steps = 0
        grad_norms: list[float] = []
        for epoch in range(cfg.ppo_epochs):
            for mini_batch in self._mini_batches(samples, epoch):
                weights = token_weights(mini_batch, loss_cfg.aggregation)  # sums to the mini-batch's loss
                self.optimizer.zero_grad(set_to_none=True)
                micro = pack_micro_batches(
                    mini_batch, weights, cfg.micro_batch_tokens, self.pad_token_id, share_prompts=self.share_prompts
                )
                for cpu_batch in micro:
                    batch = cpu_batch.to(self.device)
                    mask = batch.response_mask  # (B, R): column j is response token j
                    # Scored at the temperature it was sampled at, like the engine's behaviour logprobs; the
                    # entropy of the policy at each response position is a metric only (no gradient).
                    logprobs, entropy = self._token_logprobs(self.model, self.split, batch)  # (B, R), (N,)
                    ref_logprobs = self._reference_logprobs(batch) if loss_cfg.kl_coef > 0 else None

                    loss, parts = policy_loss(
                        logprobs,
                        batch.old_logprobs,
                        batch.advantages,
                        mask.float(),
                        batch.weights,
                        clip_low=loss_cfg.clip_low,
                        clip_high=loss_cfg.clip_high,
                        ref_logprobs=ref_logprobs,
                        kl_coef=loss_cfg.kl_coef,
                    )
                    loss.backward()

                    # Metrics are means under the loss's token weights: combine micro-batches by their weight.
                    weight = parts.pop("weight")
                    _add(sums, "loss", float(loss.detach()))
                    _add(sums, "entropy", float((entropy * batch.weights[mask]).sum()))
                    _add(sums, "weight", weight)
                    for key, value in parts.items():
                        _add(sums, key, value * weight)
                    tokens, response_tokens = tokens + batch.tokens, response_tokens + batch.response_tokens
                    forward_tokens += batch.forward_tokens
                    micro_batches += 1
                max_norm = cfg.grad_clip if cfg.grad_clip is not None else math.inf
                grad_norms.append(float(torch.nn.utils.clip_grad_norm_(self.params, max_norm)))
                self.optimizer.step()
                optimizer_steps += 1
        self.optimizer.zero_grad(set_to_none=True)
        self.model.eval()
        self.steps_done += 1
        update_s = time.perf_counter() - started

        lag = self._version_lag(samples)
        pushed = time.perf_counter()
        self._publish(self.model_version + 1)
        weight_push_s = time.perf_counter() - pushed

        weight_total = max(sums.pop("weight"), 1e-12)
        metrics = {
            "step": float(self.steps_done),
            "model_version": float(self.model_version),
            "loss": sums.pop("loss") / optimizer_steps,
            **{key: value / weight_total for key, value in sums.items()},
            "grad_norm": sum(grad_norms) / len(grad_norms),
            "lr": lr,
            "samples": float(len(samples)),
            "tokens": float(tokens),
            "response_tokens": float(response_tokens),
            "forward_tokens": float(forward_tokens),
            "tokens_per_s": tokens / update_s,
            "micro_batches": float(micro_batches),
            "optimizer_steps": float(optimizer_steps),
            "update_s": update_s,
            "weight_push_s": weight_push_s,
            **lag,
        }
        log.info(
            "step %d: loss %.4f, grad norm %.3f, %.0f tokens/s",
            self.steps_done,
            metrics["loss"],
            metrics["grad_norm"],
            metrics["tokens_per_s"],
        )
        return metrics

    def _mini_batches(self, samples: list[Sample], epoch: int) -> list[list[Sample]]:
        """The batch in ``config.mini_batches`` parts, shuffled by a generator seeded from (seed, step, epoch)."""
        parts = min(self.config.mini_batches, len(samples))
        if parts == 1:
            return [samples]
        seed = self.config.seed * _SEED_MIX_RUN + self.steps_done * _SEED_MIX_STEP + epoch
        generator = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(samples), generator=generator).tolist()
        return [[samples[i] for i in order[k::parts]] for k in range(parts)]

    @torch.no_grad()
    def _reference_logprobs(self, batch: MicroBatch) -> torch.Tensor:
        """Log-probs of the response tokens under the frozen reference: ``(B, R)``, 0 off the response."""
        context: contextlib.AbstractContextManager[Any]
        if self.reference is not None:
            reference, context = self.reference, contextlib.nullcontext()
        else:  # LoRA: the base model is the reference
            reference, context = self.model, self.model.disable_adapter()
        with context:
            return self._token_logprobs(reference, self.reference_split, batch)[0]

    def _token_logprobs(
        self, model: Any, split: DecoderHead | None, batch: MicroBatch
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return token_logprobs(model, batch, split=split, autocast_dtype=self.autocast_dtype)

    def _version_lag(self, samples: list[Sample]) -> dict[str, float]:
        current = self.engine.model_version if self.engine is not None else self.model_version
        lags = [current - s.model_version for s in samples if s.model_version is not None]
        if not lags:
            return {}
        return {"version_lag_mean": sum(lags) / len(lags), "version_lag_max": float(max(lags))}

    # --- weights to the engine ---------------------------------------------------------------------

    def engine_state_dict(self) -> dict[str, torch.Tensor]:
        """The policy's full weights, under the plain model's names (LoRA merged in: W + scale * B @ A)."""
        if self.config.lora is None:
            return {k: v.detach() for k, v in self.model.state_dict().items()}
        from peft.tuners.lora import LoraLayer

        base = self.model.get_base_model()
        deltas = {
            f"{name}.base_layer.weight": cast(Any, module).get_delta_weight(_ADAPTER)
            for name, module in base.named_modules()
            if isinstance(module, LoraLayer) and _ADAPTER in module.lora_A
        }
        merged = {}
        with torch.no_grad():
            for key, value in base.state_dict().items():
                if ".lora_" in key:
                    continue
                if key in deltas:
                    value = value + deltas[key].to(value.dtype)
                merged[key.replace(".base_layer.", ".")] = value.detach()
        return merged

    def _publish(self, version: int) -> None:
        """Make ``version`` the current model version: the engine serves it, then the callback hears of it.

        A shared engine is held while this runs (:meth:`_engine_held`) and serves ``version`` once resumed."""
        if self._sends_adapter:
            cast(Any, self.engine).update_adapter(self.model.save_pretrained, version).result()
        elif self.engine is not None and not self._shares_engine:
            self.engine.update_weights(self.engine_state_dict(), version).result()
        self.model_version = version
        if self.on_new_version is not None:
            self.on_new_version(version)

    # --- checkpoints -------------------------------------------------------------------------------

    def save(self, directory: str | Path | None = None) -> Path:
        """Write a checkpoint ``step-NNNNNN`` under ``directory`` (default ``config.checkpoint_dir``).

        It holds the weights (full model in Hugging Face layout, or the LoRA adapter in PEFT layout),
        the optimizer state, the random generator states, the step count, model version and settings,
        and is enough for :meth:`resume` to continue the run exactly. Only the newest
        ``config.keep_checkpoints`` checkpoints in the directory are kept. Returns the checkpoint's path.

        Raises:
            BadInput: no directory given and none configured.
        """
        target = directory if directory is not None else self.config.checkpoint_dir
        if target is None:
            raise BadInput("no checkpoint directory: pass one to save() or set checkpoint_dir in the trainer config")
        state = TrainerCheckpoint(
            step=self.steps_done,
            model_version=self.model_version,
            lora=self.config.lora is not None,
            config=self.config,
            loss=self.loss_config.model_dump(mode="json"),
            created_at=time.time(),
        )
        with self._random.active():
            rng = rng_state()  # as of now: writing the weights may draw random numbers (a model built to save)
            try:
                return write_checkpoint(
                    Path(target),
                    state,
                    self._write_weights,
                    self.optimizer.state_dict(),
                    rng,
                    self.config.keep_checkpoints,
                )
            finally:
                set_rng_state(rng)  # saving or not, the run goes on with the same random numbers

    def _write_weights(self, directory: Path) -> None:
        if self.config.lora is not None:
            self.model.save_pretrained(directory / "adapter")
        else:
            save_checkpoint(self.model, self.tokenizer, directory / "model")

    def resume(self, path: str | Path) -> TrainerCheckpoint:
        """Continue from a checkpoint: ``path`` is one, or a directory whose newest checkpoint is taken.

        Restores weights, optimizer state, random generator states, step count and model version,
        then pushes the weights to the engine as that version. Settings that differ from the
        checkpoint's are logged.

        Raises:
            BadInput: no checkpoint there, or it was LoRA and this trainer is not (or the other way round).
        """
        checkpoint = find_checkpoint(Path(path))
        state = read_state(checkpoint)
        if state.lora != (self.config.lora is not None):
            kind = "a LoRA adapter" if state.lora else "full weights"
            raise BadInput(f"checkpoint {checkpoint} holds {kind}: configure the trainer the same way to resume it")
        if state.config != self.config:
            changed = [k for k in TrainerConfig.model_fields if getattr(state.config, k) != getattr(self.config, k)]
            log.warning("resuming %s with changed trainer settings: %s", checkpoint, ", ".join(changed))

        with self._engine_held():
            self._load_weights(checkpoint, state)
            self.optimizer.load_state_dict(torch.load(checkpoint / OPTIMIZER_FILE, map_location=self.device))
            with self._random.active():  # the checkpoint's states become the trainer's own streams
                set_rng_state(torch.load(checkpoint / RNG_FILE))
            self.steps_done = state.step
            self.model_version = state.model_version
        if self.engine is not None and not self._shares_engine:
            # the engine serves the resumed weights; the version record already exists
            self._publish(state.model_version)
        log.info("resumed from %s: step %d, model version %d", checkpoint, state.step, state.model_version)
        return state

    def _load_weights(self, checkpoint: Path, state: TrainerCheckpoint) -> None:
        if state.lora:
            from peft import set_peft_model_state_dict

            adapter = load_file(checkpoint / "adapter" / "adapter_model.safetensors", device=str(self.device))
            set_peft_model_state_dict(self.model, adapter)
        else:
            weights: dict[str, torch.Tensor] = {}
            for file in sorted((checkpoint / "model").glob("*.safetensors")):
                weights.update(load_file(file, device=str(self.device)))
            missing, unexpected = self.model.load_state_dict(weights, strict=False)
            if missing_weights(missing, self.model.config) or unexpected:
                raise BadInput(
                    f"checkpoint {checkpoint} does not fit the model: missing {missing[:5]}, "
                    f"unexpected {unexpected[:5]}"
                )


def _add(sums: dict[str, float], key: str, value: float) -> None:
    sums[key] = sums.get(key, 0.0) + value
