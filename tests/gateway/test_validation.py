"""validation.py: request bodies parsed and validated at the boundary; each refusal a 400 naming the field."""

from __future__ import annotations

from typing import Any

import pytest

from agentbolt.gateway.errors import GatewayError
from agentbolt.gateway.validation import MIN_TEMPERATURE, parse_json, validate_body
from agentbolt.types import ChatCompletionRequest, CompletionRequest

USER = [{"role": "user", "content": "hi"}]
CHAT = {"model": "policy", "messages": USER}
TEXT = {"model": "policy", "prompt": "hi"}

BAD_VALUES: list[tuple[str, dict[str, Any], str]] = [
    ("seed 2**64", {"seed": 2**64}, "seed"),
    ("seed 2**63", {"seed": 2**63}, "seed"),
    ("seed below int64", {"seed": -(2**63) - 1}, "seed"),
    ("seed not an integer", {"seed": 1.5}, "seed"),
    ("temperature 1e-50", {"temperature": 1e-50}, "temperature"),
    ("temperature below the minimum", {"temperature": MIN_TEMPERATURE / 2}, "temperature"),
    ("temperature negative", {"temperature": -0.1}, "temperature"),
    ("temperature above 2", {"temperature": 2.5}, "temperature"),
    ("top_p zero", {"top_p": 0}, "top_p"),
    ("top_p above 1", {"top_p": 1.5}, "top_p"),
    ("max_tokens zero", {"max_tokens": 0}, "max_tokens"),
    ("n zero", {"n": 0}, "n"),
    ("frequency_penalty above 2", {"frequency_penalty": 3}, "frequency_penalty"),
    ("presence_penalty below -2", {"presence_penalty": -2.5}, "presence_penalty"),
    ("stop of 17 strings", {"stop": [str(i) for i in range(17)]}, "stop"),
    ("stop not strings", {"stop": [1]}, "stop"),
]
BAD_CHAT = [
    *BAD_VALUES,
    ("top_logprobs above 20", {"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ("top_logprobs negative", {"logprobs": True, "top_logprobs": -1}, "top_logprobs"),
    ("max_completion_tokens zero", {"max_completion_tokens": 0}, "max_completion_tokens"),
]
BAD_TEXT = [
    *BAD_VALUES,
    ("logprobs above 20", {"logprobs": 21}, "logprobs"),
    ("best_of zero", {"best_of": 0}, "best_of"),
]


@pytest.mark.parametrize(("case", "fields", "param"), BAD_CHAT, ids=[c[0] for c in BAD_CHAT])
def test_bad_chat_parameter_is_a_400_naming_it(case: str, fields: dict[str, Any], param: str) -> None:
    with pytest.raises(GatewayError) as info:
        validate_body(ChatCompletionRequest, {**CHAT, **fields})
    assert (info.value.http_status, info.value.param) == (400, param)


@pytest.mark.parametrize(("case", "fields", "param"), BAD_TEXT, ids=[c[0] for c in BAD_TEXT])
def test_bad_completion_parameter_is_a_400_naming_it(case: str, fields: dict[str, Any], param: str) -> None:
    with pytest.raises(GatewayError) as info:
        validate_body(CompletionRequest, {**TEXT, **fields})
    assert (info.value.http_status, info.value.param) == (400, param)


GOOD: list[tuple[str, dict[str, Any]]] = [
    ("seed at the int64 ends", {"seed": 2**63 - 1}),
    ("negative seed", {"seed": -(2**63)}),
    ("greedy", {"temperature": 0}),
    ("smallest temperature", {"temperature": MIN_TEMPERATURE}),
    ("zero penalties", {"frequency_penalty": 0, "presence_penalty": -0.0}),
    ("penalty at the range end", {"presence_penalty": 2}),
    ("top_p 1", {"top_p": 1}),
]


@pytest.mark.parametrize(("case", "fields"), GOOD, ids=[c[0] for c in GOOD])
def test_values_at_the_edges_of_the_ranges_are_accepted(case: str, fields: dict[str, Any]) -> None:
    validate_body(ChatCompletionRequest, {**CHAT, **fields})


def test_empty_stop_strings_are_ignored() -> None:
    assert validate_body(ChatCompletionRequest, {**CHAT, "stop": [""]}).stop_strings() == []
    assert validate_body(ChatCompletionRequest, {**CHAT, "stop": ["", "END"]}).stop_strings() == ["END"]
    assert validate_body(CompletionRequest, {**TEXT, "stop": ""}).stop_strings() == []


@pytest.mark.parametrize(
    "raw",
    [b'{"temperature": NaN}', b'{"temperature": Infinity}', b'{"top_p": -Infinity}', b'{"seed": 1e400}'],
)
def test_non_finite_numbers_are_refused_as_invalid_json(raw: bytes) -> None:
    with pytest.raises(GatewayError) as info:
        parse_json(raw)
    assert (info.value.http_status, info.value.code) == (400, "invalid_json")


def test_json_nested_too_deeply_is_a_400() -> None:
    with pytest.raises(GatewayError, match="nested too deeply") as info:
        parse_json(b"[" * 100_000 + b"]" * 100_000)
    assert (info.value.http_status, info.value.code) == (400, "invalid_json")


def test_body_that_is_not_utf8_is_invalid_json() -> None:
    with pytest.raises(GatewayError) as info:
        parse_json(b'{"model": "\xff"}')
    assert info.value.code == "invalid_json"
