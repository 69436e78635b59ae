"""Fixed models: served beside the policy under their own names, traced, marked so they are never trained."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from agentbolt.errors import BadInput
from agentbolt.server import create_app
from agentbolt.types import ServerConfig
from tests.gateway.live_gateway import (
    MODEL,
    ScriptedBackend,
    StartServer,
    attempt_url,
    claim_attempt,
    finish_attempt,
    llm_spans,
)


def fixed_backend(tokenizer: Any) -> ScriptedBackend:
    backend = ScriptedBackend(tokenizer, ["I stay as I am."], max_context=64)
    backend.model_name = "reviewer"
    return backend


@pytest.fixture
def backends(tokenizer: Any) -> tuple[ScriptedBackend, ScriptedBackend]:
    return ScriptedBackend(tokenizer, ["I am being trained."]), fixed_backend(tokenizer)


@pytest.fixture
def server(start_server: StartServer, backends: tuple[ScriptedBackend, ScriptedBackend]) -> Any:
    policy, fixed = backends
    return start_server(policy, fixed=(fixed,))


def test_models_lists_the_policy_first_then_the_fixed_models(server: Any) -> None:
    models = httpx.get(f"{server.url}/v1/models").json()["data"]
    assert [(m["id"], m["max_model_len"]) for m in models] == [(MODEL, 2048), ("reviewer", 64)]
    assert httpx.get(f"{server.url}/v1/models/reviewer").status_code == 200


def test_each_call_goes_to_the_model_it_names_and_fixed_calls_are_marked(
    server: Any, backends: tuple[ScriptedBackend, ScriptedBackend]
) -> None:
    policy, fixed = backends
    rollout_id, attempt_id = claim_attempt(server.url)
    base = attempt_url(server.url, rollout_id, attempt_id)
    solver = openai.OpenAI(base_url=base, api_key="unused", default_headers={"X-Agentbolt-Agent": "solver"})
    reviewer = openai.OpenAI(base_url=base, api_key="unused", default_headers={"X-Agentbolt-Agent": "reviewer"})
    messages = [{"role": "user", "content": "Hello"}]
    trained = solver.chat.completions.create(model=MODEL, messages=messages, max_tokens=16)  # type: ignore[arg-type]
    kept = reviewer.chat.completions.create(model="reviewer", messages=messages, max_tokens=16)  # type: ignore[arg-type]
    finish_attempt(server.url, rollout_id, attempt_id)

    assert (trained.model, trained.choices[0].message.content) == (MODEL, "I am being trained.")
    assert (kept.model, kept.choices[0].message.content) == ("reviewer", "I stay as I am.")
    assert (len(policy.requests), len(fixed.requests)) == (1, 1)
    spans = {s["attributes"]["agentbolt.llm.agent_name"]: s for s in llm_spans(server.url, rollout_id)}
    assert spans["reviewer"]["name"] == "chat reviewer"
    assert spans["reviewer"]["attributes"]["gen_ai.response.model"] == "reviewer"
    assert spans["reviewer"]["attributes"]["agentbolt.llm.fixed"] is True
    assert spans["reviewer"]["attributes"]["agentbolt.llm.response_token_ids"]  # traced in full
    assert "agentbolt.llm.fixed" not in spans["solver"]["attributes"]


def test_a_fixed_model_has_its_own_context_limit_and_unknown_names_list_every_model(server: Any) -> None:
    messages = [{"role": "user", "content": "Hello"}]
    r = httpx.post(
        f"{server.url}/v1/chat/completions", json={"model": "reviewer", "messages": messages, "max_tokens": 100}
    )
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "context_length_exceeded" and "context of 64 tokens" in r.text
    r = httpx.post(f"{server.url}/v1/chat/completions", json={"model": "judge", "messages": messages})
    assert r.status_code == 404
    assert "'policy', 'reviewer'" in r.json()["error"]["message"]


def test_two_models_with_one_name_are_refused(tokenizer: Any) -> None:
    policy = ScriptedBackend(tokenizer, ["x"])
    with pytest.raises(BadInput, match="two served models are named 'policy'"):
        create_app(ServerConfig(), backend=policy, fixed=[ScriptedBackend(tokenizer, ["y"])])
    with pytest.raises(BadInput, match="needs the policy"):
        create_app(ServerConfig(), fixed=[fixed_backend(tokenizer)])
