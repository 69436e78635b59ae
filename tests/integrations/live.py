"""Shared parts of the framework integration tests: a real server with the gateway, a worker, stored spans.

Each test runs a real framework in a real :class:`agentbolt.Worker` against a real server on loopback. The
model is either the embedded engine on a tiny random model (plumbing: its replies are garbage, so agents must
cope) or :class:`RuleBackend`, which answers by a rule on the rendered prompt — a fake only at the model
boundary, for paths a random model cannot reach (valid tool calls, a final answer).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from agentbolt import semconv
from agentbolt.adapter.episode import build_episode
from agentbolt.client.worker import Worker
from agentbolt.server.background import BackgroundServer
from agentbolt.types import (
    AdapterConfig,
    Episode,
    GenerationRequest,
    GenerationResult,
    GenerationTimings,
    Rollout,
    ServerConfig,
    Span,
    Transition,
)

MODEL = "policy"


class RuleBackend:
    """A gateway backend whose reply text is ``rule(prompt_text)``; the text is tokenized and ended with EOS.

    Replies depend only on the conversation, so concurrent rollouts get consistent answers.
    """

    system = "scripted"

    def __init__(
        self, tokenizer: Any, rule: Callable[[str], str], max_context: int = 8192, model_name: str = MODEL
    ) -> None:
        self.model_name = model_name
        self.tokenizer = tokenizer
        self.max_context = max_context
        self.eos_token_ids = frozenset({tokenizer.eos_token_id})
        self.rule = rule
        self.prompts: list[str] = []

    @property
    def model_version(self) -> int:
        return 3

    def check_request(self, request: GenerationRequest) -> None:
        pass

    async def generate(self, request: GenerationRequest, *, affinity: str | None = None) -> GenerationResult:
        await asyncio.sleep(0)
        prompt = self.tokenizer.decode(request.prompt_token_ids)
        self.prompts.append(prompt)
        ids = [*self.tokenizer.encode(self.rule(prompt), add_special_tokens=False), self.tokenizer.eos_token_id]
        ids = ids[: request.max_new_tokens]
        return GenerationResult(
            response_token_ids=ids,
            logprobs=[-0.25] * len(ids),
            finish_reason="stop" if ids[-1] in self.eos_token_ids else "length",
            model_version=self.model_version,
            timings=GenerationTimings(queued_s=0, generation_s=0, batch_size=1),
        )

    async def aclose(self) -> None:
        pass


@dataclass
class Outcome:
    """What a run left in the store: each rollout (JSON) with its spans."""

    rollouts: list[dict[str, Any]]
    spans: dict[str, list[dict[str, Any]]]

    def all_spans(self) -> list[dict[str, Any]]:
        return [s for spans in self.spans.values() for s in spans]

    def llm_calls(self, rollout_id: str | None = None) -> list[dict[str, Any]]:
        spans = self.spans[rollout_id] if rollout_id else self.all_spans()
        return [s for s in spans if s["attributes"].get(semconv.GEN_AI_OPERATION) in semconv.LLM_OPERATIONS]

    def tool_calls(self, rollout_id: str | None = None) -> list[dict[str, Any]]:
        spans = self.spans[rollout_id] if rollout_id else self.all_spans()
        return [s for s in spans if s["attributes"].get(semconv.GEN_AI_OPERATION) == "execute_tool"]

    def agent_names(self) -> set[str]:
        """Agent names on the LLM-call spans (from the X-Agentbolt-Agent header)."""
        return {str(s["attributes"].get(semconv.LLM_AGENT_NAME)) for s in self.llm_calls()}


def example_tasks(example: str, n: int) -> list[Any]:
    """The first ``n`` training tasks of ``examples/<example>/questions.jsonl`` (read as `agentbolt train` does)."""
    from agentbolt.train import load_tasks
    from agentbolt.types import TaskSource

    root = Path(__file__).resolve().parents[2]
    return load_tasks(TaskSource(file=f"examples/{example}/questions.jsonl", limit=n), root)


def run_rollouts(
    tmp_path: Path,
    backend: Any,
    agent: Any,
    tasks: list[Any],
    *,
    fixed: tuple[Any, ...] = (),
    concurrency: int = 2,
    timeout_s: float = 120,
) -> Outcome:
    """Serve ``backend`` (and ``fixed`` models), enqueue ``tasks``, run a worker until it has claimed them all,
    return what was stored."""
    # The rule backends script hermes-style replies and look for <tool_response> blocks.
    config = ServerConfig(port=0, store_url=f"sqlite:///{tmp_path / 'integration.db'}", tool_format="hermes")
    with BackgroundServer(config, backend=backend, fixed=fixed) as server:
        body = [{"input": task, "config": {"timeout_s": timeout_s}} for task in tasks]
        created = httpx.post(f"{server.url}/api/rollouts/batch", json=body, timeout=30)
        assert created.status_code == 201, created.text
        worker = Worker(agent, server.url, concurrency=concurrency, max_rollouts=len(tasks), poll_wait_s=1.0)
        stats = asyncio.run(worker.run())
        assert stats.claimed == len(tasks), stats
        rollouts, spans = [], {}
        with httpx.Client(base_url=server.url, timeout=30) as client:
            for rollout in created.json():
                rid = rollout["rollout_id"]
                rollouts.append(client.get(f"/api/rollouts/{rid}").json())
                spans[rid] = client.get(f"/api/rollouts/{rid}/spans", params={"limit": 10_000}).json()["items"]
    return Outcome(rollouts=rollouts, spans=spans)


def assert_llm_spans_have_tokens(outcome: Outcome) -> None:
    """Every LLM call was recorded with the engine's prompt and response token ids and the model version."""
    calls = outcome.llm_calls()
    assert calls, "no LLM-call spans were stored"
    for span in calls:
        attrs = span["attributes"]
        assert attrs[semconv.LLM_PROMPT_TOKEN_IDS], span["name"]
        assert attrs[semconv.LLM_RESPONSE_TOKEN_IDS], span["name"]
        assert len(attrs[semconv.LLM_RESPONSE_LOGPROBS]) == len(attrs[semconv.LLM_RESPONSE_TOKEN_IDS])
        assert isinstance(attrs[semconv.LLM_MODEL_VERSION], int)


def episodes_of(outcome: Outcome, agents: list[str] | None = None) -> list[Episode]:
    """The real adapter's episode of each stored rollout (in ``outcome.rollouts`` order), keeping ``agents``' calls.

    Uses the adapter's defaults (client spans placed by clock: by arrival order a tool span can land after the
    next LLM call, since the worker exports its spans in batches). Fails if a rollout gives no episode, or if a
    call was dropped for any reason but the agent filter or being a fixed model's.
    """
    episodes = []
    for raw in outcome.rollouts:
        rollout = Rollout.model_validate(raw)
        spans = [Span.model_validate(s) for s in outcome.spans[rollout.rollout_id]]
        result = build_episode(rollout, spans, AdapterConfig(agents=agents))
        assert result.episode is not None, (rollout.rollout_id, result.dropped)
        assert set(result.transitions_dropped) <= {"agent_filtered", "fixed_model"}, result.transitions_dropped
        assert result.rewards_invalid == 0 and result.rewards_unattributed == 0, result
        episodes.append(result.episode)
    return episodes


def assert_trainable(episode: Episode, rollout: dict[str, Any]) -> None:
    """Each transition carries the engine's tokens (one logprob per response token); the final reward is the
    rollout's reward."""
    assert episode.transitions, f"rollout {episode.rollout_id} gave no transitions"
    assert [t.index for t in episode.transitions] == list(range(len(episode.transitions)))
    for t in episode.transitions:
        assert t.prompt_token_ids and t.response_token_ids, t.span_id
        assert len(t.logprobs) == len(t.response_token_ids), t.span_id
        assert t.token_source == "engine" and t.model_version == 3, t
    assert episode.final_reward is not None and episode.final_reward.final
    assert episode.final_reward.value == rollout["reward"]
    assert episode.rollout_reward == rollout["reward"]


def transitions_of(outcome: Outcome, agents: list[str] | None = None) -> list[list[Transition]]:
    """The adapter's transitions of each rollout (see :func:`episodes_of`)."""
    return [episode.transitions for episode in episodes_of(outcome, agents)]


def outcomes_of(episode: Episode) -> list[tuple[str | None, list[tuple[str | None, bool]]]]:
    """Each transition's agent and the (tool name, success) of the tool calls the adapter placed after it."""
    return [(t.agent_name, [(o.name, o.success) for o in t.tool_outcomes]) for t in episode.transitions]
