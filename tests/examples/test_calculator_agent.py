"""The calculator agent against the real gateway (real server, real openai client), with scripted model replies.

A scripted backend stands in for the model so each test decides exactly what the model says: a tool call,
a broken tool call, an answer. The tool-call text is the gateway's format (agentbolt/gateway/tools.py).
"""

from __future__ import annotations

from typing import Any

import pytest

from agentbolt.types import LLM
from examples.calculator.agent import MAX_TURNS, solve
from tests.gateway.live_gateway import MODEL, ScriptedBackend, StartServer, attempt_url, claim_attempt

TASK = {"question": "Mia has 12 apples. Mia gets 7 more. How many apples does Mia have now?", "answer": 19}


def _call(expression: str) -> str:
    return '<tool_call>{"name": "calculator", "arguments": {"expression": "' + expression + '"}}</tool_call>'


def _run(start_server: StartServer, tokenizer: Any, replies: list[str]) -> tuple[float, ScriptedBackend]:
    backend = ScriptedBackend(tokenizer, replies)
    server = start_server(backend)
    rollout_id, attempt_id = claim_attempt(server.url)
    llm = LLM(base_url=attempt_url(server.url, rollout_id, attempt_id), model=MODEL, api_key="unused")
    return float(solve(TASK, llm)), backend


def _prompt(tokenizer: Any, backend: ScriptedBackend, index: int) -> str:
    return str(tokenizer.decode(backend.requests[index].prompt_token_ids))


def test_the_calculator_result_goes_back_to_the_model_and_the_right_answer_scores_one(
    start_server: StartServer, tokenizer: Any
) -> None:
    reward, backend = _run(start_server, tokenizer, [_call("12 + 7"), "12 + 7 = 19.\nAnswer: 19"])
    assert reward == 1.0
    assert len(backend.requests) == 2
    second = _prompt(tokenizer, backend, 1)
    assert "calculator result: 19" in second  # the demo model's tool format is pythonic (tool_format auto)


def test_a_wrong_answer_scores_zero(start_server: StartServer, tokenizer: Any) -> None:
    reward, _ = _run(start_server, tokenizer, ["12 + 7 = 18.\nAnswer: 18"])
    assert reward == 0.0


def test_a_bad_expression_is_reported_to_the_model_not_raised(start_server: StartServer, tokenizer: Any) -> None:
    reward, backend = _run(start_server, tokenizer, [_call("apples + 7"), "Answer: 19"])
    assert reward == 1.0
    assert "error:" in _prompt(tokenizer, backend, 1)


@pytest.mark.parametrize("reply", ['<tool_call>{"name": "calculator", "arguments": {oops', "", "\x00\ufffd"])
def test_garbage_from_the_model_scores_zero_without_crashing(
    start_server: StartServer, tokenizer: Any, reply: str
) -> None:
    reward, backend = _run(start_server, tokenizer, [reply])
    assert reward == 0.0
    assert len(backend.requests) == 1


def test_a_model_that_only_calls_tools_stops_after_max_turns_with_zero(
    start_server: StartServer, tokenizer: Any
) -> None:
    reward, backend = _run(start_server, tokenizer, [_call("1 + 1")])
    assert reward == 0.0
    assert len(backend.requests) == MAX_TURNS
