"""The pythonic tool format: tools, calls and results written into the prompt, and calls read from replies.

(The hermes format, the gateway's first, is covered by test_tools.py.)
"""

from __future__ import annotations

import builtins
import json
from typing import Any

import pytest

from agentbolt.gateway.tools import parse_tool_calls, render_tool_messages


def _tool(name: str, description: str = "", required: list[str] | None = None, **properties: str) -> dict[str, Any]:
    params: dict[str, Any] = {"type": "object", "properties": {key: {"type": kind} for key, kind in properties.items()}}
    if required is not None:
        params["required"] = required
    return {"type": "function", "function": {"name": name, "description": description, "parameters": params}}


TOOLS = [
    _tool("add", "Add two numbers.", ["a", "b"], a="number", b="number"),
    _tool("multiply", "Multiply two numbers", ["a", "b"], a="number", b="number"),
    _tool("get-weather", "Weather of a city.", ["city"], city="string", days="integer"),
]


def _call(name: str, arguments: dict[str, Any], call_id: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}


def _render(messages: list[dict[str, Any]], tools: Any = TOOLS, tool_choice: Any = "auto", **kw: Any) -> list[Any]:
    return render_tool_messages(messages, tools, tool_choice, tool_format="pythonic", **kw)


def _parse(text: str) -> tuple[str | None, list[tuple[str, dict[str, Any]]], str | None]:
    reply = parse_tool_calls(text, TOOLS, "pythonic")
    calls = [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in reply.tool_calls]
    return reply.content, calls, reply.malformed


# --- rendering ---------------------------------------------------------------------------------------


def test_a_conversation_with_calls_and_results_renders_exactly() -> None:
    messages = [
        {"role": "system", "content": "You are a calculator."},
        {"role": "user", "content": "What is (2+3) and (4*5)?"},
        {
            "role": "assistant",
            "content": "Let me compute.",
            "tool_calls": [_call("add", {"a": 2, "b": 3}, "call_a"), _call("multiply", {"a": 4, "b": 5}, "call_m")],
        },
        {"role": "tool", "tool_call_id": "call_a", "content": "5"},
        {"role": "tool", "tool_call_id": "call_m", "content": "20"},
        {"role": "assistant", "content": "5 and 20."},
        {"role": "user", "content": "Thanks"},
    ]

    assert _render(messages) == [
        {
            "role": "system",
            "content": "You are a calculator.\n\n"
            "add: Add two numbers. To use it, reply with only: [add(a=..., b=...)]\n"
            "multiply: Multiply two numbers. To use it, reply with only: [multiply(a=..., b=...)]\n"
            'get-weather: Weather of a city. To use it, reply with only: [get-weather(city="...")]\n'
            "If no tool is needed, answer directly.",
        },
        {"role": "user", "content": "What is (2+3) and (4*5)?"},
        {"role": "assistant", "content": "Let me compute.\n[add(a=2, b=3), multiply(a=4, b=5)]"},
        {"role": "user", "content": "add result: 5\nmultiply result: 20"},
        {"role": "assistant", "content": "5 and 20."},
        {"role": "user", "content": "Thanks"},
    ]


def test_the_demo_conversation_renders_through_smollm2_chat_template(tokenizer: Any) -> None:
    calculator = _tool("calculator", "Evaluate an arithmetic expression", ["expression"], expression="string")
    messages = [
        {"role": "user", "content": "What is 12 * 34?"},
        {"role": "assistant", "content": None, "tool_calls": [_call("calculator", {"expression": "12 * 34"}, "c1")]},
        {"role": "tool", "tool_call_id": "c1", "content": "408"},
        {"role": "assistant", "content": "Answer: 408"},
        {"role": "user", "content": "What is 23 * 47?"},
    ]

    text = tokenizer.apply_chat_template(_render(messages, [calculator]), add_generation_prompt=True, tokenize=False)

    assert text == (
        "<|im_start|>system\n"
        "calculator: Evaluate an arithmetic expression. "
        'To use it, reply with only: [calculator(expression="...")]\n'
        "If no tool is needed, answer directly.<|im_end|>\n"
        "<|im_start|>user\nWhat is 12 * 34?<|im_end|>\n"
        '<|im_start|>assistant\n[calculator(expression="12 * 34")]<|im_end|>\n'
        "<|im_start|>user\ncalculator result: 408<|im_end|>\n"
        "<|im_start|>assistant\nAnswer: 408<|im_end|>\n"
        "<|im_start|>user\nWhat is 23 * 47?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


@pytest.mark.parametrize(
    ("tool", "line"),
    [
        (
            _tool(
                "f",
                "Does\n  things",
                ["s", "n", "xs", "o", "b"],
                s="string",
                n="integer",
                xs="array",
                o="object",
                b="boolean",
            ),
            'f: Does things. To use it, reply with only: [f(s="...", n=..., xs=[...], o={...}, b=...)]',
        ),
        (_tool("f", "", None, q="string"), 'f: To use it, reply with only: [f(q="...")]'),  # no "required": all shown
        (_tool("f", "Ask!", [], q="string"), "f: Ask! To use it, reply with only: [f()]"),
        (
            _tool("f", "", ["first-name"], **{"first-name": "string"}),
            'f: To use it, reply with only: [f(**{"first-name": "..."})]',
        ),
        ({"type": "function", "function": {"name": "ping"}}, "ping: To use it, reply with only: [ping()]"),
    ],
)
def test_each_tool_is_one_line_with_its_own_call(tool: dict[str, Any], line: str) -> None:
    system = _render([{"role": "user", "content": "hi"}], [tool])[0]["content"]

    assert system == line + "\nIf no tool is needed, answer directly."


def test_tool_choice_lines_are_those_of_the_hermes_format() -> None:
    hi = [{"role": "user", "content": "hi"}]
    named = {"type": "function", "function": {"name": "add"}}

    assert _render(hi, tool_choice="required")[0]["content"].endswith("\nYou must call a tool.")
    assert _render(hi, tool_choice=named)[0]["content"].endswith('\nYou must call the tool "add".')
    assert _render(hi, tool_choice="none") == hi


def test_rendered_calls_parse_back_to_the_same_calls() -> None:
    sent = [
        ("add", {"a": 1.5, "b": -2}),
        ("get-weather", {"city": 'Zürich "old town"\n', "days": None, "first-name": True, "opts": {"units": ["C", 1]}}),
    ]
    message = {
        "role": "assistant",
        "content": "",
        "tool_calls": [_call(n, a, f"c{i}") for i, (n, a) in enumerate(sent)],
    }
    text = _render([message])[1]["content"]

    assert text == (
        '[add(a=1.5, b=-2), get-weather(city="Zürich \\"old town\\"\\n", days=None, opts={"units": ["C", 1]}, '
        '**{"first-name": True})]'
    )
    assert _parse(text) == (None, sent, None)


def test_recall_text_is_used_verbatim() -> None:
    message = {"role": "assistant", "content": None, "tool_calls": [_call("add", {"a": 1, "b": 2}, "c1")]}
    raw = "[add(a=1,b=2)"

    assert _render([message], recall=lambda m: raw)[1]["content"] == raw


def test_a_result_of_an_unknown_call_is_still_one_line() -> None:
    messages = [{"role": "tool", "tool_call_id": "call_x", "content": "7"}]

    assert _render(messages, None, None) == [{"role": "user", "content": "tool result: 7"}]


# --- parsing -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "content", "calls"),
    [
        ("[add(a=2, b=3)]", None, [("add", {"a": 2, "b": 3})]),
        ("  [add(a=2, b=3), multiply(a=4, b=5)]\n", None, [("add", {"a": 2, "b": 3}), ("multiply", {"a": 4, "b": 5})]),
        ("[add(a=2, b=3)]\n[multiply(a=4,\n b=5)]", None, [("add", {"a": 2, "b": 3}), ("multiply", {"a": 4, "b": 5})]),
        ("```python\n[add(a=2, b=3)]\n```", None, [("add", {"a": 2, "b": 3})]),
        ("```\n[add(a=2, b=3)]\n```\nThat adds them.", "That adds them.", [("add", {"a": 2, "b": 3})]),
        ("[add(a=2, b=3)", None, [("add", {"a": 2, "b": 3})]),  # missing ]
        ("[add(a=2, b=3", None, [("add", {"a": 2, "b": 3})]),  # missing )]
        ("add(a=2, b=3)", None, [("add", {"a": 2, "b": 3})]),  # a bare call
        ("[add(a=2, b=3)] I will add them.", "I will add them.", [("add", {"a": 2, "b": 3})]),
        ("Let me add.\n[add(a=2, b=3)]", "Let me add.", [("add", {"a": 2, "b": 3})]),
        ("[add(a='2', b=3.0)]", None, [("add", {"a": "2", "b": 3.0})]),
        ("[add(**{'a': 2}, b=(1, 2))]", None, [("add", {"a": 2, "b": [1, 2]})]),
        ('[get-weather(city="x")]', None, [("get-weather", {"city": "x"})]),
        ('[get-weather(city="get-weather(1)")]', None, [("get-weather", {"city": "get-weather(1)"})]),
        ('<tool_call>{"name": "add", "arguments": {"a": 1}}</tool_call>', None, [("add", {"a": 1})]),  # hermes too
    ],
)
def test_calls_small_models_write_are_understood(
    text: str, content: str | None, calls: list[tuple[str, dict[str, Any]]]
) -> None:
    assert _parse(text) == (content, calls, None)


@pytest.mark.parametrize(
    "text",
    [
        "The answer is 408.",
        "Answer: 408",
        "[1, 2, 3] are the numbers.",
        "[Answer: 408]",
        "[]",
        "You could use add(a=1) for that.",  # a bare call counts only at the start
        "",
    ],
)
def test_plain_text_is_content_not_a_call_and_not_malformed(text: str) -> None:
    assert _parse(text) == (text or None, [], None)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("[sqrt(x=4)]", "unknown tool 'sqrt'"),
        ("[add(a=1), sqrt(x=4)]", "unknown tool 'sqrt'"),
        ("[math.add(a=1)]", "unknown tool 'math.add'"),
        ("[add(2, 3)]", "'add' got positional arguments"),
        ("[add(*[2, 3])]", "'add' got positional arguments"),
        ("[add(a=open('x'))]", "argument 'a' of 'add' is not a literal value"),
        ("[add(a=1 + x)]", "argument 'a' of 'add' is not a literal value"),
        ("[add(a=...)]", "argument 'a' of 'add' is the placeholder ...: give a value"),
        ("[add(a={1, 2})]", "arguments of 'add' are not JSON values"),
        ("[add(**[1])]", "** in a call of 'add' must unpack a dict"),
        ("[add]", "a tool call must look like name(argument=value)"),
        ('[add(a="1)]', "a string in the tool calls is not closed"),
        ("[add(a=[1)]", "the brackets of the tool calls do not match"),
        ("[add(a=[1, (2", "the tool calls are cut off"),
        ("[add(a=1 b=2)]", "the tool calls are not valid Python calls"),
        ("Sure: [add(a=1, a=2)]", "argument 'a' of 'add' is given twice"),
    ],
)
def test_malformed_attempts_return_the_raw_text_and_a_reason(text: str, reason: str) -> None:
    content, calls, malformed = _parse(text)

    assert (content, calls) == (text, []) and malformed is not None and malformed.startswith(reason)


def test_a_non_literal_argument_is_never_evaluated(monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[Any] = []
    monkeypatch.setattr(builtins, "open", lambda *args, **kw: opened.append(args))

    _, calls, malformed = _parse("[add(a=open('x'), b=__import__('os').getcwd())]")

    assert opened == [] and calls == [] and malformed


def test_the_hermes_format_does_not_read_pythonic_calls() -> None:
    reply = parse_tool_calls("[add(a=2, b=3)]", TOOLS, "hermes")

    assert (reply.content, reply.tool_calls, reply.malformed) == ("[add(a=2, b=3)]", [], None)


def test_arguments_are_a_json_string_of_the_keyword_arguments() -> None:
    [call] = parse_tool_calls('[get-weather(city="Zürich", days=3)]', TOOLS, "pythonic").tool_calls

    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"] == {"name": "get-weather", "arguments": '{"city": "Zürich", "days": 3}'}
