"""Tool calling for models without a tool chat template: rendering requests, parsing replies, and tool calls
through the gateway (OpenAI tool_calls out, recorded on the span)."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import openai
import pytest

from agentbolt.errors import BadInput
from agentbolt.gateway.tools import (
    active_tools,
    choose_tool_format,
    format_tool_call,
    parse_tool_calls,
    render_tool_messages,
)
from tests.gateway.live_gateway import (
    MODEL,
    ScriptedBackend,
    StartServer,
    attempt_url,
    claim_attempt,
    finish_attempt,
    llm_spans,
)


def _tool(name: str, description: str = "", **properties: str) -> dict[str, Any]:
    params = {
        "type": "object",
        "properties": {key: {"type": kind} for key, kind in properties.items()},
        "required": list(properties),
    }
    return {"type": "function", "function": {"name": name, "description": description, "parameters": params}}


TOOLS = [
    _tool("add", "Add two numbers.", a="number", b="number"),
    _tool("multiply", "Multiply two numbers.", a="number", b="number"),
]


def _call(name: str, arguments: dict[str, Any], call_id: str = "call_1") -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}


def _conversation() -> list[dict[str, Any]]:
    """A user question, the assistant's two calls, their results, and a follow-up."""
    return [
        {"role": "system", "content": "You are a calculator."},
        {"role": "user", "content": "What is (2+3) and (4*5)?"},
        {
            "role": "assistant",
            "content": "Let me compute.",
            "tool_calls": [_call("add", {"a": 2, "b": 3}, "call_a"), _call("multiply", {"a": 4, "b": 5}, "call_m")],
        },
        {"role": "tool", "tool_call_id": "call_a", "content": "5"},
        {"role": "tool", "tool_call_id": "call_m", "content": "20"},
        {"role": "user", "content": "Thanks"},
    ]


def _arguments(reply_call: dict[str, Any]) -> dict[str, Any]:
    return json.loads(reply_call["function"]["arguments"])


# --- rendering ---------------------------------------------------------------------------------


def test_rendered_messages_use_only_plain_roles_and_string_content() -> None:
    rendered = render_tool_messages(_conversation(), TOOLS, "auto")

    assert [m["role"] for m in rendered] == ["system", "user", "assistant", "user", "user"]
    assert all(isinstance(m["content"], str) and set(m) == {"role", "content"} for m in rendered)


def test_tools_are_listed_in_the_system_message_after_the_callers_system_prompt() -> None:
    system = render_tool_messages(_conversation(), TOOLS, "auto")[0]["content"]

    assert system.startswith("You are a calculator.")
    for tool in TOOLS:
        listed = json.dumps(
            {"name": tool["function"]["name"], **{k: tool["function"][k] for k in ("description", "parameters")}},
            separators=(",", ":"),
        )
        assert listed in system
    assert "<tool_call>" in system and "answer directly" in system


def test_system_message_is_created_when_tools_are_given_without_one() -> None:
    rendered = render_tool_messages([{"role": "user", "content": "hi"}], TOOLS, None)

    assert rendered[0]["role"] == "system" and '"name":"add"' in rendered[0]["content"]
    assert rendered[1] == {"role": "user", "content": "hi"}


def test_no_system_message_is_added_without_tools() -> None:
    messages = [{"role": "user", "content": "hi"}]

    assert render_tool_messages(messages, None, None) == messages
    assert render_tool_messages(messages, [], "auto") == messages


def test_tool_choice_none_lists_no_tools_but_still_renders_the_history() -> None:
    rendered = render_tool_messages(_conversation(), TOOLS, "none")

    assert rendered[0] == {"role": "system", "content": "You are a calculator."}
    assert "<tool_call>" in rendered[2]["content"] and "<tool_response" in rendered[3]["content"]


def test_tool_choice_required_says_a_tool_must_be_called() -> None:
    system = render_tool_messages([{"role": "user", "content": "2+3?"}], TOOLS, "required")[0]["content"]

    assert "You must call a tool." in system and "answer directly" not in system


def test_named_tool_choice_says_which_tool_must_be_called() -> None:
    choice = {"type": "function", "function": {"name": "multiply"}}
    system = render_tool_messages([{"role": "user", "content": "2*3?"}], TOOLS, choice)[0]["content"]

    assert 'You must call the tool "multiply".' in system and "answer directly" not in system


def test_system_and_developer_messages_are_merged_in_order_at_the_front() -> None:
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "First."},
        {"role": "user", "content": "hi"},
        {"role": "developer", "content": "Second."},
        {"role": "system", "content": [{"type": "text", "text": "Third."}]},
    ]

    rendered = render_tool_messages(messages, None, None)

    assert rendered == [{"role": "system", "content": "First.\n\nSecond.\n\nThird."}, {"role": "user", "content": "hi"}]


def test_text_parts_are_flattened_into_one_string() -> None:
    parts = [{"type": "text", "text": "What is "}, {"type": "text", "text": "2+3?"}]

    rendered = render_tool_messages([{"role": "user", "content": parts}], None, None)

    assert rendered == [{"role": "user", "content": "What is 2+3?"}]


def test_tool_results_become_one_user_message_naming_each_tool_and_call() -> None:
    rendered = render_tool_messages(_conversation(), TOOLS, "auto")

    assert rendered[3]["content"] == (
        '<tool_response name="add" id="call_a">\n5\n</tool_response>\n'
        '<tool_response name="multiply" id="call_m">\n20\n</tool_response>'
    )
    assert rendered[4] == {"role": "user", "content": "Thanks"}


def test_tool_result_name_field_is_used_when_the_call_is_not_in_the_history() -> None:
    messages = [{"role": "tool", "tool_call_id": "call_x", "name": "add", "content": [{"type": "text", "text": "7"}]}]

    assert render_tool_messages(messages, None, None)[0]["content"] == (
        '<tool_response name="add" id="call_x">\n7\n</tool_response>'
    )


def test_assistant_tool_calls_render_in_the_format_the_model_is_asked_to_emit() -> None:
    assistant = render_tool_messages(_conversation(), TOOLS, "auto")[2]["content"]

    assert assistant == (
        "Let me compute.\n"
        '<tool_call>{"name": "add", "arguments": {"a": 2, "b": 3}}</tool_call>\n'
        '<tool_call>{"name": "multiply", "arguments": {"a": 4, "b": 5}}</tool_call>'
    )


def test_rendered_assistant_tool_calls_parse_back_to_the_same_calls() -> None:
    history = _conversation()[2]
    assistant = render_tool_messages([history], TOOLS, "auto")[1]["content"]

    reply = parse_tool_calls(assistant, TOOLS)

    assert reply.malformed is None and reply.content == "Let me compute."
    sent = [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in history["tool_calls"]]
    assert [(c["function"]["name"], _arguments(c)) for c in reply.tool_calls] == sent


def test_parsed_calls_render_back_to_the_text_they_came_from() -> None:
    text = 'Sure.\n<tool_call>{"name": "add", "arguments": {"a": 1.5, "b": -2}}</tool_call>'
    reply = parse_tool_calls(text, TOOLS)

    again = render_tool_messages(
        [{"role": "assistant", "content": reply.content, "tool_calls": reply.tool_calls}], None, None
    )

    assert again[0]["content"] == text


def test_recall_text_is_used_verbatim_for_assistant_tool_calls() -> None:
    seen: list[dict[str, Any]] = []
    raw = "<tool_call> {'name': 'add', 'arguments': {'a': 2, 'b': 3}}"

    def recall(message: dict[str, Any]) -> str | None:
        seen.append(message)
        return raw if message["tool_calls"][0]["id"] == "call_a" else None

    rendered = render_tool_messages(_conversation(), TOOLS, "auto", recall=recall)

    assert rendered[2]["content"] == raw
    assert [m["tool_calls"][0]["id"] for m in seen] == ["call_a"]  # only messages with tool calls are recalled


def test_recall_returning_none_falls_back_to_rendering() -> None:
    plain = render_tool_messages(_conversation(), TOOLS, "auto")

    assert render_tool_messages(_conversation(), TOOLS, "auto", recall=lambda message: None) == plain


def test_assistant_message_without_content_renders_only_its_calls() -> None:
    message = {"role": "assistant", "content": None, "tool_calls": [_call("add", {"a": 1, "b": 2})]}

    assert render_tool_messages([message], None, None)[0]["content"] == format_tool_call("add", {"a": 1, "b": 2})


# --- validation --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tools", "field"),
    [
        ([{"type": "function", "function": {"description": "no name"}}], "tools[0].function.name"),
        ([{"type": "function"}], "tools[0].function"),
        (
            [TOOLS[0], {"type": "function", "function": {"name": "sub", "parameters": "a, b"}}],
            "tools[1].function.parameters",
        ),
        ([TOOLS[0], TOOLS[1], TOOLS[0]], "tools[2].function.name 'add' is a duplicate"),
        ([{"type": "retrieval", "function": {"name": "x"}}], "tools[0].type"),
        ([{"type": "function", "function": {"name": "has space"}}], "tools[0].function.name"),
        ("add", "tools must be a list"),
    ],
)
def test_invalid_tools_are_rejected_naming_the_field(tools: Any, field: str) -> None:
    for call in (
        lambda: render_tool_messages([{"role": "user", "content": "hi"}], tools, "auto"),
        lambda: parse_tool_calls("hi", tools),
        lambda: active_tools(tools, "auto"),
    ):
        with pytest.raises(BadInput, match=re.escape(field)):
            call()


@pytest.mark.parametrize(
    ("tools", "tool_choice", "field"),
    [
        (TOOLS, {"type": "function", "function": {"name": "divide"}}, "tool_choice.function.name 'divide'"),
        (TOOLS, {"type": "function"}, "tool_choice must be"),
        (TOOLS, "sometimes", "tool_choice 'sometimes'"),
        (None, "required", "tool_choice 'required' needs"),
        (None, {"type": "function", "function": {"name": "add"}}, "tool_choice.function.name 'add'"),
    ],
)
def test_invalid_tool_choice_is_rejected(tools: Any, tool_choice: Any, field: str) -> None:
    with pytest.raises(BadInput, match=re.escape(field)):
        render_tool_messages([{"role": "user", "content": "hi"}], tools, tool_choice)
    with pytest.raises(BadInput, match=re.escape(field)):
        active_tools(tools, tool_choice)


@pytest.mark.parametrize(
    ("message", "field"),
    [
        ({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}, "messages[0].content[0]"),
        (
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "input_audio"}]},
            "messages[0].content[1]",
        ),
        ({"role": "user", "content": 42}, "messages[0].content must be"),
        ({"role": "user"}, "messages[0].content is missing"),
        ({"role": "function", "content": "x"}, "messages[0].role 'function'"),
        ({"content": "x"}, "messages[0].role None"),
        (
            {"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "add", "arguments": "{a: 1"}}]},
            "messages[0].tool_calls[0].function.arguments is not valid JSON",
        ),
        (
            {"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "add", "arguments": "[1]"}}]},
            "messages[0].tool_calls[0].function.arguments must be a JSON object",
        ),
        ({"role": "assistant", "tool_calls": [{"id": "c", "function": {}}]}, "messages[0].tool_calls[0].function.name"),
    ],
)
def test_invalid_messages_are_rejected_naming_the_field(message: dict[str, Any], field: str) -> None:
    with pytest.raises(BadInput, match=re.escape(field)):
        render_tool_messages([message], TOOLS, "auto")


def test_tool_result_without_a_call_id_is_rendered_unlinked() -> None:
    # OpenAI's schema makes tool_call_id optional; the result is still shown to the model.
    messages = [{"role": "user", "content": "2+3?"}, {"role": "tool", "content": "5"}]
    rendered = render_tool_messages(messages, TOOLS, "auto")
    assert rendered[-1]["content"] == "<tool_response>\n5\n</tool_response>"


def test_active_tools_are_none_when_no_tool_may_be_called() -> None:
    assert active_tools(None, None) is None
    assert active_tools([], "auto") is None
    assert active_tools(TOOLS, "none") is None
    assert active_tools(TOOLS, "required") == TOOLS
    assert active_tools(TOOLS, None) == TOOLS


# --- parsing -----------------------------------------------------------------------------------


def test_text_without_a_call_attempt_is_content_only() -> None:
    text = 'The answer is 5. In JSON: {"result": 5}'

    reply = parse_tool_calls(text, TOOLS)

    assert (reply.content, reply.tool_calls, reply.malformed) == (text, [], None)


def test_empty_reply_has_no_content() -> None:
    assert parse_tool_calls("", TOOLS).content is None


def test_parsing_is_off_without_tools() -> None:
    text = '<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}</tool_call>'

    no_tools: tuple[list[dict[str, Any]] | None, ...] = (None, [])
    for tools in no_tools:
        reply = parse_tool_calls(text, tools)
        assert (reply.content, reply.tool_calls, reply.malformed) == (text, [], None)


def test_call_with_surrounding_text_returns_both() -> None:
    text = 'I will add them.\n<tool_call>{"name": "add", "arguments": {"a": 2, "b": 3}}</tool_call>\nOne moment.  \n'

    reply = parse_tool_calls(text, TOOLS)

    assert reply.malformed is None
    assert reply.content == "I will add them.\nOne moment."
    assert [c["function"]["name"] for c in reply.tool_calls] == ["add"]
    assert _arguments(reply.tool_calls[0]) == {"a": 2, "b": 3}


def test_calls_have_openai_shape_with_fresh_ids_and_json_string_arguments() -> None:
    text = format_tool_call("add", {"a": 1, "b": 2}) + "\n" + format_tool_call("add", {"a": 1, "b": 2})

    first, second = parse_tool_calls(text, TOOLS).tool_calls
    again = parse_tool_calls(text, TOOLS).tool_calls[0]

    for call in (first, second, again):
        assert set(call) == {"id", "type", "function"} and call["type"] == "function"
        assert re.fullmatch(r"call_[0-9a-f]{24}", call["id"])
        assert isinstance(call["function"]["arguments"], str)
    assert len({first["id"], second["id"], again["id"]}) == 3


def test_several_calls_are_returned_in_order_and_content_is_none_when_only_calls() -> None:
    text = (
        '<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}</tool_call>\n'
        '<tool_call>{"name": "multiply", "arguments": {"a": 3, "b": 4}}</tool_call>\n'
    )

    reply = parse_tool_calls(text, TOOLS)

    assert reply.content is None and reply.malformed is None
    assert [(c["function"]["name"], _arguments(c)) for c in reply.tool_calls] == [
        ("add", {"a": 1, "b": 2}),
        ("multiply", {"a": 3, "b": 4}),
    ]


@pytest.mark.parametrize(
    "text",
    [
        '<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}',
        '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n\n',
        "<tool_call>{'name': 'add', 'arguments': {'a': 1, 'b': 2}}</tool_call>",
        '<tool_call>{"name": "add", "arguments": "{\\"a\\": 1, \\"b\\": 2}"}</tool_call>',
        '<tool_call>{"name": "add", "parameters": {"a": 1, "b": 2}}</tool_call>',
        '<tool_call>[{"name": "add", "arguments": {"a": 1, "b": 2}}]</tool_call>',
        '<tool_call>\n```json\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n```\n</tool_call>',
        '{"name": "add", "arguments": {"a": 1, "b": 2}}',
        '  ```json\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n```\n',
        "[{'name': 'add', 'arguments': {'a': 1, 'b': 2}}]",
    ],
    ids=[
        "unclosed-at-end",
        "whitespace",
        "single-quotes",
        "arguments-as-json-string",
        "parameters-key",
        "list-in-one-tag",
        "fence-in-tag",
        "bare-object",
        "bare-fenced",
        "bare-python-list",
    ],
)
def test_sloppy_calls_small_models_write_are_understood(text: str) -> None:
    reply = parse_tool_calls(text, TOOLS)

    assert reply.malformed is None and reply.content is None
    assert [(c["function"]["name"], _arguments(c)) for c in reply.tool_calls] == [("add", {"a": 1, "b": 2})]


def test_missing_closing_tag_between_calls_is_tolerated() -> None:
    text = '<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}\n<tool_call>{"name": "multiply", "arguments": {}}'

    reply = parse_tool_calls(text, TOOLS)

    assert reply.malformed is None
    assert [(c["function"]["name"], _arguments(c)) for c in reply.tool_calls] == [
        ("add", {"a": 1, "b": 2}),
        ("multiply", {}),
    ]


def test_call_without_arguments_gets_an_empty_object() -> None:
    reply = parse_tool_calls('<tool_call>{"name": "add"}</tool_call>', TOOLS)

    assert reply.tool_calls[0]["function"]["arguments"] == "{}"


def test_non_ascii_arguments_are_kept() -> None:
    tools = [_tool("greet", who="string")]

    reply = parse_tool_calls('<tool_call>{"name": "greet", "arguments": {"who": "Zoë 😀"}}</tool_call>', tools)

    assert _arguments(reply.tool_calls[0]) == {"who": "Zoë 😀"}


def test_json_inside_prose_is_not_taken_for_a_call() -> None:
    text = 'Call it like {"name": "add", "arguments": {"a": 1}} next time.'

    reply = parse_tool_calls(text, TOOLS)

    assert (reply.content, reply.tool_calls, reply.malformed) == (text, [], None)


def test_bare_json_that_is_not_a_call_is_content() -> None:
    text = '{"name": "Mia", "age": 7}'

    reply = parse_tool_calls(text, TOOLS)

    assert (reply.content, reply.tool_calls, reply.malformed) == (text, [], None)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('<tool_call>{"name": "add", "arguments": {"a": 1,</tool_call>', "not valid JSON"),
        ("<tool_call>add(1, 2)</tool_call>", "not valid JSON"),
        ('<tool_call>{"name": "add", "arguments": {"a": 1}}}</tool_call>', "not valid JSON"),
        ('<tool_call>{"name": "add", "arguments": {"a": 1}}\nThe answer is 3.', "not valid JSON"),
        ('<tool_call>{"name": "divide", "arguments": {"a": 1, "b": 2}}</tool_call>', "unknown tool 'divide'"),
        ('{"name": "divide", "arguments": {"a": 1}}', "unknown tool 'divide'"),
        ('<tool_call>{"name": "add", "arguments": [1, 2]}</tool_call>', "arguments of 'add' are not a JSON object"),
        ('<tool_call>{"name": "add", "arguments": 3}</tool_call>', "arguments of 'add' are not a JSON object"),
        ('<tool_call>{"name": "add", "arguments": "a=1"}</tool_call>', "arguments of 'add' are not valid JSON"),
        ('<tool_call>{"name": "add", "arguments": "[1]"}</tool_call>', "arguments of 'add' are not a JSON object"),
        ('<tool_call>{"name": "add", "arguments": {"a": NaN}}</tool_call>', "not valid JSON"),
        (
            "<tool_call>{'name': 'add', 'arguments': {'a': {1, 2}}}</tool_call>",
            "arguments of 'add' are not JSON values",
        ),
        ('<tool_call>{"arguments": {"a": 1}}</tool_call>', "no tool name"),
        ("<tool_call>[]</tool_call>", "empty list"),
        ('<tool_call>["add"]</tool_call>', "must be an object"),
        ("<tool_call></tool_call>", "not valid JSON"),
        ('{"name": "add", "arguments": {"a": 1}}</tool_call>', "</tool_call> without <tool_call>"),
        (
            '<tool_call>{"name": "add", "arguments": {}}</tool_call> done </tool_call>',
            "</tool_call> without <tool_call>",
        ),
    ],
)
def test_malformed_attempts_return_the_raw_text_and_a_reason(text: str, reason: str) -> None:
    reply = parse_tool_calls(text, TOOLS)

    assert reply.tool_calls == [] and reply.content == text
    assert reply.malformed is not None and reason in reply.malformed


def test_one_malformed_call_discards_the_valid_ones() -> None:
    text = (
        '<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}</tool_call>\n'
        '<tool_call>{"name": "sqrt", "arguments": {"x": 2}}</tool_call>'
    )

    reply = parse_tool_calls(text, TOOLS)

    assert reply.tool_calls == [] and reply.content == text and reply.malformed == "unknown tool 'sqrt'"


# --- with the demo model's chat template -------------------------------------------------------


def test_rendered_conversation_goes_through_smollm2_chat_template(tokenizer: Any) -> None:
    rendered = render_tool_messages(_conversation(), TOOLS, "auto")

    text = tokenizer.apply_chat_template(rendered, add_generation_prompt=True, tokenize=False)

    assert text.count("<|im_start|>") == len(rendered) + 1  # our system message replaced SmolLM2's default one
    assert "You are a helpful AI assistant named SmolLM" not in text
    assert '<tool_call>{"name": "multiply", "arguments": {"a": 4, "b": 5}}</tool_call>' in text
    assert text.endswith("<|im_start|>assistant\n")


def test_system_prompt_with_two_tools_stays_short(tokenizer: Any) -> None:
    system = render_tool_messages([{"role": "user", "content": "2+3?"}], TOOLS, "auto")[0]

    n_tokens = len(tokenizer.encode(system["content"], add_special_tokens=False))
    print(f"system prompt with two tools: {n_tokens} tokens")

    assert n_tokens < 300


# --- through the gateway, with a scripted backend (exact replies), in the hermes format --------------

SAY_HELLO = [{"role": "user", "content": "Say hello."}]
GATEWAY_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "add",
            "description": "Add two numbers.",
            "parameters": {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}}},
        },
    }
]
CALL_TEXT = 'Let me add.\n<tool_call>{"name": "add", "arguments": {"a": 2, "b": 3}}</tool_call>'


def test_tool_call_reply_becomes_openai_tool_calls_and_is_recorded(start_server: StartServer, tokenizer: Any) -> None:
    server = start_server(ScriptedBackend(tokenizer, [CALL_TEXT, "It is 5."]), tool_format="hermes")
    rollout_id, attempt_id = claim_attempt(server.url)
    client = openai.OpenAI(base_url=attempt_url(server.url, rollout_id, attempt_id), api_key="unused")
    messages: list[Any] = [{"role": "user", "content": "What is 2 + 3?"}]
    reply = client.chat.completions.create(model=MODEL, messages=messages, tools=GATEWAY_TOOLS)  # type: ignore[arg-type]
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Let me add."
    [call] = choice.message.tool_calls or []
    assert call.function.name == "add" and json.loads(call.function.arguments) == {"a": 2, "b": 3}

    # The agent sends the call back with re-serialised arguments (as LangChain does) and the tool's result.
    echoed = {
        "role": "assistant",
        "content": choice.message.content,
        "tool_calls": [{"id": call.id, "type": "function", "function": {"name": "add", "arguments": '{"a":2,"b":3}'}}],
    }
    messages += [echoed, {"role": "tool", "tool_call_id": call.id, "content": "5"}]
    final = client.chat.completions.create(model=MODEL, messages=messages, tools=GATEWAY_TOOLS)  # type: ignore[arg-type]
    assert final.choices[0].message.content == "It is 5." and final.choices[0].finish_reason == "stop"
    finish_attempt(server.url, rollout_id, attempt_id)

    first, second = (s["attributes"] for s in llm_spans(server.url, rollout_id))
    assert json.loads(first["agentbolt.llm.tool_calls"]) == [call.model_dump(exclude_none=True)]
    assert first["agentbolt.llm.tool_call_malformed"] is False
    assert first["gen_ai.response.finish_reasons"] == ["tool_calls"]
    # The assistant turn was rendered from the model's own text: the prompt repeats its exact tokens.
    assert second["agentbolt.llm.fidelity_mismatch"] is False
    repeated = first["agentbolt.llm.prompt_token_ids"] + first["agentbolt.llm.response_token_ids"]
    assert second["agentbolt.llm.prompt_token_ids"][: len(repeated)] == repeated


def test_malformed_tool_call_is_returned_as_text_and_flagged(start_server: StartServer, tokenizer: Any) -> None:
    broken = '<tool_call>{"name": "add", "arguments": {"a": 2,</tool_call>'
    server = start_server(ScriptedBackend(tokenizer, [broken]), tool_format="hermes")
    rollout_id, attempt_id = claim_attempt(server.url)
    client = openai.OpenAI(base_url=attempt_url(server.url, rollout_id, attempt_id), api_key="unused")
    reply = client.chat.completions.create(model=MODEL, messages=SAY_HELLO, tools=GATEWAY_TOOLS)  # type: ignore[arg-type]
    assert reply.choices[0].message.content == broken
    assert not reply.choices[0].message.tool_calls and reply.choices[0].finish_reason == "stop"
    finish_attempt(server.url, rollout_id, attempt_id)
    [span] = llm_spans(server.url, rollout_id)
    assert span["attributes"]["agentbolt.llm.tool_call_malformed"] is True
    assert span["attributes"]["agentbolt.llm.tool_call_error"]


def test_streamed_tool_call_reassembles_in_the_openai_client(start_server: StartServer, tokenizer: Any) -> None:
    server = start_server(ScriptedBackend(tokenizer, [CALL_TEXT]), tool_format="hermes")
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused")
    with client.chat.completions.stream(
        model=MODEL,
        messages=SAY_HELLO,
        tools=GATEWAY_TOOLS,
        stream_options={"include_usage": True},  # type: ignore[arg-type]
    ) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content == "Let me add."
    [call] = choice.message.tool_calls or []
    assert (call.function.name, json.loads(call.function.arguments)) == ("add", {"a": 2, "b": 3})
    assert final.usage is not None and final.usage.completion_tokens > 0


# --- the tool format of each served model ------------------------------------------------------------


class _Tokenizer:
    """What choose_tool_format reads of a tokenizer."""

    def __init__(self, name_or_path: str, chat_template: str | dict[str, str] | None) -> None:
        self.name_or_path = name_or_path
        self.chat_template = chat_template


CHATML = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
TOOL_TEMPLATE = "{% if tools %}<tools>{{ tools | tojson }}</tools>{% endif %}" + CHATML


def test_auto_picks_pythonic_for_the_demo_tokenizer(tokenizer: Any) -> None:
    assert choose_tool_format("auto", tokenizer) == ("pythonic", "SmolLM2 family")


@pytest.mark.parametrize(
    "other",
    [
        _Tokenizer("Qwen/Qwen2.5-0.5B-Instruct", CHATML),
        _Tokenizer("meta-llama/Llama-3.2-1B-Instruct", None),
        _Tokenizer("/models/checkpoint-000010", {"default": CHATML}),
    ],
)
def test_auto_picks_hermes_for_models_of_no_listed_family(other: Any) -> None:
    assert choose_tool_format("auto", other)[0] == "hermes"


@pytest.mark.parametrize(
    "smollm2",
    [
        _Tokenizer("HuggingFaceTB/SmolLM2-360M-Instruct", CHATML),  # by name
        _Tokenizer("/runs/calc/checkpoints/step-000012", None),  # a checkpoint keeps its chat template
    ],
)
def test_auto_recognises_smollm2_by_name_or_by_its_chat_template(smollm2: Any, tokenizer: Any) -> None:
    if smollm2.chat_template is None:
        smollm2.chat_template = tokenizer.chat_template

    assert choose_tool_format("auto", smollm2) == ("pythonic", "SmolLM2 family")


def test_auto_leaves_a_template_that_knows_tools_on_hermes() -> None:
    assert choose_tool_format("auto", _Tokenizer("HuggingFaceTB/SmolLM2-1.7B-tools", TOOL_TEMPLATE))[0] == "hermes"


@pytest.mark.parametrize("setting", ["hermes", "pythonic"])
def test_a_set_tool_format_applies_to_every_model(setting: str, tokenizer: Any) -> None:
    for model in (tokenizer, _Tokenizer("Qwen/Qwen2.5-0.5B-Instruct", CHATML)):
        assert choose_tool_format(setting, model)[0] == setting


def test_an_unknown_tool_format_is_refused(tokenizer: Any) -> None:
    with pytest.raises(ValueError, match="must be 'auto', 'hermes' or 'pythonic'"):
        choose_tool_format("xml", tokenizer)


# --- through the gateway, in the pythonic format ---------------------------------------------------

CALCULATOR = _tool("calculator", "Evaluate an arithmetic expression such as 12 * 34.", expression="string")
WORKED = [
    {"role": "system", "content": "Solve the math problem."},
    {"role": "user", "content": "What is 12 * 34?"},
    {"role": "assistant", "content": None, "tool_calls": [_call("calculator", {"expression": "12 * 34"}, "call_ex")]},
    {"role": "tool", "tool_call_id": "call_ex", "content": "408"},
    {"role": "assistant", "content": "Answer: 408"},
    {"role": "user", "content": "What is 23 * 47?"},
]
WORKED_PROMPT = (
    "<|im_start|>system\nSolve the math problem.\n\n"
    "calculator: Evaluate an arithmetic expression such as 12 * 34. "
    'To use it, reply with only: [calculator(expression="...")]\n'
    "If no tool is needed, answer directly.<|im_end|>\n"
    "<|im_start|>user\nWhat is 12 * 34?<|im_end|>\n"
    '<|im_start|>assistant\n[calculator(expression="12 * 34")]<|im_end|>\n'
    "<|im_start|>user\ncalculator result: 408<|im_end|>\n"
    "<|im_start|>assistant\nAnswer: 408<|im_end|>\n"
    "<|im_start|>user\nWhat is 23 * 47?<|im_end|>\n"
    "<|im_start|>assistant\n"
)


def test_the_tiny_model_on_the_demo_tokenizer_gets_tools_in_the_pythonic_format(
    start_server: StartServer, tiny_engine: Any, tokenizer: Any
) -> None:
    from agentbolt.gateway.backend import EngineBackend

    server = start_server(EngineBackend(tiny_engine, MODEL))  # tool_format "auto", the default
    rollout_id, attempt_id = claim_attempt(server.url)
    client = openai.OpenAI(base_url=attempt_url(server.url, rollout_id, attempt_id), api_key="unused")
    reply = client.chat.completions.create(
        model=MODEL,
        messages=WORKED,  # type: ignore[arg-type]
        tools=[CALCULATOR],  # type: ignore[list-item]
        max_tokens=4,
        temperature=0,
    )
    assert reply.choices[0].finish_reason in ("stop", "length", "tool_calls")
    finish_attempt(server.url, rollout_id, attempt_id)

    [span] = llm_spans(server.url, rollout_id)
    prompt = tokenizer.decode(span["attributes"]["agentbolt.llm.prompt_token_ids"], skip_special_tokens=False)
    assert prompt == WORKED_PROMPT


def test_pythonic_call_reply_becomes_openai_tool_calls_and_its_text_is_repeated(
    start_server: StartServer, tokenizer: Any
) -> None:
    server = start_server(ScriptedBackend(tokenizer, ['[calculator(expression="23 * 47")]', "Answer: 1081"]))
    rollout_id, attempt_id = claim_attempt(server.url)
    client = openai.OpenAI(base_url=attempt_url(server.url, rollout_id, attempt_id), api_key="unused")
    messages: list[Any] = list(WORKED)
    reply = client.chat.completions.create(model=MODEL, messages=messages, tools=[CALCULATOR])  # type: ignore[list-item]
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    [call] = choice.message.tool_calls or []
    assert call.function.name == "calculator" and json.loads(call.function.arguments) == {"expression": "23 * 47"}

    messages += [
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "1081"},
    ]
    final = client.chat.completions.create(model=MODEL, messages=messages, tools=[CALCULATOR])  # type: ignore[list-item]
    assert final.choices[0].message.content == "Answer: 1081"
    finish_attempt(server.url, rollout_id, attempt_id)

    first, second = (s["attributes"] for s in llm_spans(server.url, rollout_id))
    assert first["agentbolt.llm.tool_call_malformed"] is False
    assert second["agentbolt.llm.fidelity_mismatch"] is False
    repeated = first["agentbolt.llm.prompt_token_ids"] + first["agentbolt.llm.response_token_ids"]
    assert second["agentbolt.llm.prompt_token_ids"][: len(repeated)] == repeated
    assert tokenizer.decode(second["agentbolt.llm.prompt_token_ids"]).endswith(
        "<|im_start|>user\ncalculator result: 1081<|im_end|>\n<|im_start|>assistant\n"
    )


def test_a_fixed_model_of_another_family_keeps_the_hermes_format(start_server: StartServer, tokenizer: Any) -> None:
    other = copy.deepcopy(tokenizer)  # the same ids, but neither SmolLM2's name nor its chat template
    other.name_or_path = "Qwen/Qwen2.5-0.5B-Instruct"
    other.chat_template = CHATML + "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    policy, reviewer = ScriptedBackend(tokenizer, ["Hi."]), ScriptedBackend(other, ["Hi."])
    reviewer.model_name = "reviewer"
    server = start_server(policy, fixed=(reviewer,))
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused")
    for model in (MODEL, "reviewer"):
        client.chat.completions.create(model=model, messages=SAY_HELLO, tools=[CALCULATOR])  # type: ignore[list-item]

    policy_prompt, reviewer_prompt = (tokenizer.decode(b.requests[0].prompt_token_ids) for b in (policy, reviewer))
    assert '[calculator(expression="...")]' in policy_prompt and "<tool_call>" not in policy_prompt
    assert "<tool_call>" in reviewer_prompt and "[calculator(" not in reviewer_prompt
