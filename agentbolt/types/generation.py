"""One generation request to an engine backend and its result."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from agentbolt.types.base import _Model

# Embedded inference engine (agentbolt/engine): one generation request and its result


MIN_TEMPERATURE = 1e-3
"""The smallest positive sampling temperature: below it, logits / temperature overflows float32 for ordinary
logits (1e-50 even rounds to 0). The gateway refuses smaller ones with a 400; the engine refuses them too."""


class GenerationRequest(_Model):
    """One completion asked of the engine: prompt token ids in, sampled token ids out.

    ``temperature == 0`` means greedy decoding. Generation stops at the model's end-of-turn token(s),
    at any of ``stop_token_ids`` (the stop token is kept as the last response token, so the trainer
    sees the model choosing to stop), or after ``max_new_tokens``.
    """

    prompt_token_ids: list[int] = Field(min_length=1)
    max_new_tokens: int = Field(default=256, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=100.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stop_token_ids: list[int] = Field(default_factory=list)
    seed: int | None = Field(default=None, description="Same seed, prompt and weights: same tokens.")
    top_logprobs: int = Field(default=0, ge=0, le=20, description="Alternatives reported per position.")

    def check_fits(self, max_context: int, vocab_size: int) -> None:
        """Raise :class:`~agentbolt.errors.BadInput` when this request cannot run on a model with that context
        length and vocabulary size."""
        from agentbolt.errors import BadInput

        n = len(self.prompt_token_ids)
        if n + self.max_new_tokens > max_context:
            raise BadInput(
                f"prompt ({n} tokens) + max_new_tokens ({self.max_new_tokens}) exceeds the model's context "
                f"length of {max_context} tokens: shorten the prompt or lower max_new_tokens"
            )
        bad = [t for t in self.prompt_token_ids if not 0 <= t < vocab_size]
        if bad:
            raise BadInput(f"prompt_token_ids holds ids outside the vocabulary [0, {vocab_size}): {bad[:5]}")


class TokenLogprob(_Model):
    token_id: int
    logprob: float


class GenerationTimings(_Model):
    queued_s: float = Field(description="From submission until its batch started.")
    generation_s: float = Field(description="From its batch starting until its last token.")
    batch_size: int = Field(description="Sequences decoded together in its batch.")


class GenerationResult(_Model):
    """What the engine sampled, with what the RL trainer needs to use it.

    ``logprobs[i]`` is the log-probability of ``response_token_ids[i]`` under the sampling
    distribution before top-p truncation: ``log_softmax(logits / temperature)``, or
    ``log_softmax(logits)`` when greedy. ``model_version`` is the weights version it ran on.
    """

    response_token_ids: list[int]
    logprobs: list[float]
    top_logprobs: list[list[TokenLogprob]] | None = None
    finish_reason: Literal["stop", "length"]
    model_version: int
    timings: GenerationTimings
    token_source: Literal["engine", "retokenized"] = Field(
        default="engine", description="engine: ids came from the engine; retokenized: from tokenizing its text."
    )
    token_drift: int | None = Field(
        default=None, description="When retokenized: |len(ids) - tokens the engine reported|, if it reported any."
    )
