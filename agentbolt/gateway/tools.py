"""Tool calling for models whose chat template knows nothing of tools (SmolLM2 is one).

The gateway renders an OpenAI chat request into plain system/user/assistant messages with
:func:`render_tool_messages`, and turns the model's reply back into OpenAI ``tool_calls`` with
:func:`parse_tool_calls`, both in one of two text formats (``tool_formats.py`` has each format's details):

- ``hermes``: ``<tool_call>{"name": "add", "arguments": {"a": 2, "b": 3}}</tool_call>``, results in
  ``<tool_response>`` blocks (the format of Hermes and Qwen templates);
- ``pythonic``: ``[add(a=2, b=3)]``, results as ``add result: 5`` (what Llama 3.2/4 emit).

The system message keeps the caller's system prompts (all system and developer messages, merged in order)
and adds the tool instructions; assistant turns with tool calls are rendered in the same format the model is
asked to write (or, when the gateway remembers it, as the model's own raw text: ``recall``), so a model that
imitates earlier turns emits calls that parse.

``tool_choice``: ``"none"`` renders no tools and turns parsing off (pass ``tools=None`` to the parser);
``"auto"`` (the default) lets the model choose; ``"required"`` and ``{"type": "function", "function":
{"name": ...}}`` add a line saying it must call a tool (that one). The model is only told: nothing forces it.

An attempted call that does not parse, names an unknown tool, or has arguments that are not an object makes
the whole reply malformed: ``ParsedReply.malformed`` says why, no tool calls are returned, and the raw text is
the content (the gateway flags it on the span: an AIR signal). Arguments are not checked against the tool's
schema: the tool reports bad arguments itself, which is the signal the agent and the trainer should see.

Choosing the format
-------------------
``ServerConfig.tool_format`` (``agentbolt serve --tool-format``, ``tool_format:`` in a train config) is
``hermes`` or ``pythonic`` for every served model, or ``auto`` (the default): each served model, the policy and
each fixed model, gets its family's format from :data:`FAMILY_TOOL_FORMATS`, and hermes when it is in no family::

    family      recognised by its tokenizer                           format    why
    SmolLM2     "SmolLM2" in its name or path, or SmolLM2's chat      pythonic  the calls it makes, below
                template (default system prompt "You are a helpful
                AI assistant named SmolLM, trained by Hugging Face")
    any other                                                         hermes    the format before there
                                                                                were two

SmolLM2-135M-Instruct (the demo model) at T=1, 64 prompts "What is A * B?" (two 2-digit numbers); replies with
a parseable calculator call:

- hermes, the tools in the system prompt: 0/64; plus one worked example in earlier turns: 0/64 (the model
  imitates the ``<tool_response>`` block instead);
- pythonic, each tool's own call in the instruction (``[calculator(expression="...")]``) and one worked
  example in earlier turns (question, call, ``calculator result: 408``, ``Answer: 408``): 43/64 (41 with the
  right expression); with a generic instruction (``[tool_name(argument="value")]``) instead: 18/64 (it
  invents tool names); without the worked example: 0/64.

So an agent for a model this small should put one worked example in its conversation
(``examples/calculator/agent.py`` does). The family is read from the tokenizer because every backend has one
(the embedded engine, and upstream engines through ``--tokenizer``), and its chat template survives what
names do not: a GGUF file (its file name is not kept), a saved checkpoint, a fine-tune. A model whose chat
template renders tools itself (it mentions ``tools``) is in no family: it stays on hermes. Only the 135M model
was measured; SmolLM2-1.7B was trained on calls in ``<tool_call>`` tags, so ``tool_format: hermes`` may suit it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from agentbolt.errors import BadInput
from agentbolt.gateway.tool_formats import (
    CALL_CLOSE,
    CALL_OPEN,
    HERMES,
    PYTHONIC,
    RESPONSE_CLOSE,
    RESPONSE_OPEN,
    Malformed,
    ToolTextFormat,
    format_tool_call,
)
from agentbolt.types.config import ToolFormatSetting

__all__ = [
    "CALL_CLOSE",
    "CALL_OPEN",
    "FAMILY_TOOL_FORMATS",
    "RESPONSE_CLOSE",
    "RESPONSE_OPEN",
    "FamilyFormat",
    "ParsedReply",
    "ToolFormat",
    "active_tools",
    "choose_tool_format",
    "format_tool_call",
    "parse_tool_calls",
    "render_tool_messages",
]

ToolFormat = Literal["hermes", "pythonic"]

_FORMATS: dict[str, ToolTextFormat] = {"hermes": HERMES, "pythonic": PYTHONIC}
_TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # OpenAI's rule for function names
_ROLES = ("system", "developer", "user", "assistant", "tool")


@dataclass(frozen=True)
class ParsedReply:
    """A model reply split into text and OpenAI tool calls.

    Attributes:
        content: text outside tool-call markup (None when empty); the whole raw text when ``malformed``.
        tool_calls: ``[{"id", "type": "function", "function": {"name", "arguments": JSON string}}]``.
        malformed: why an attempted tool call could not be used (then ``tool_calls == []``), else None.
    """

    content: str | None
    tool_calls: list[dict[str, Any]]
    malformed: str | None = None


# --- choosing the format -----------------------------------------------------------------------------


@dataclass(frozen=True)
class FamilyFormat:
    """A model family and the tool format ``auto`` gives it.

    Attributes:
        family: the family's name (for the log).
        clue: found in the tokenizer's ``name_or_path`` or its chat template when the model is of the family.
        tool_format: the format its models are served with.
    """

    family: str
    clue: re.Pattern[str]
    tool_format: ToolFormat


FAMILY_TOOL_FORMATS: tuple[FamilyFormat, ...] = (
    FamilyFormat(
        "SmolLM2",
        re.compile(r"smollm2|You are a helpful AI assistant named SmolLM, trained by Hugging Face", re.IGNORECASE),
        "pythonic",
    ),
)


def choose_tool_format(setting: ToolFormatSetting, tokenizer: Any) -> tuple[ToolFormat, str]:
    """The tool format a model is served with, and why (a few words for the log).

    Args:
        setting: ``ServerConfig.tool_format``: ``"hermes"``, ``"pythonic"``, or ``"auto"`` (by model family,
            see the module docstring).
        tokenizer: the model's tokenizer (its ``name_or_path`` and ``chat_template`` are read).

    Raises:
        ValueError: ``setting`` is none of those.
    """
    if setting != "auto":
        if setting not in ("hermes", "pythonic"):
            raise ValueError(f"tool_format {setting!r} must be 'auto', 'hermes' or 'pythonic'")
        return setting, "set by tool_format"
    template = getattr(tokenizer, "chat_template", None)
    templates = [t for t in (template.values() if isinstance(template, dict) else [template]) if isinstance(t, str)]
    if any("tools" in t for t in templates):
        return "hermes", "its chat template knows tools"
    name = getattr(tokenizer, "name_or_path", None)
    clues = [name, *templates] if isinstance(name, str) else templates
    for entry in FAMILY_TOOL_FORMATS:
        if any(entry.clue.search(clue) for clue in clues):
            return entry.tool_format, f"{entry.family} family"
    return "hermes", "no family with a format of its own"


# --- validation --------------------------------------------------------------------------------


def active_tools(tools: list[dict[str, Any]] | None, tool_choice: str | dict[str, Any] | None) -> list[dict] | None:
    """The tools the model is offered: ``tools`` once validated, or None when there are none or
    ``tool_choice`` is ``"none"``. Pass the result to :func:`parse_tool_calls`.

    Raises:
        BadInput: a tool or ``tool_choice`` is invalid (the message names the field).
    """
    names = _check_tools(tools)
    _check_tool_choice(tool_choice, names)
    if not names or tool_choice == "none":
        return None
    return list(tools or [])


def _check_tools(tools: Any) -> list[str]:
    """Names of ``tools`` (OpenAI "tools" list), in order; raises BadInput naming the bad field."""
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise BadInput("tools must be a list of {'type': 'function', 'function': {...}} objects")
    names: list[str] = []
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, Mapping):
            raise BadInput(f"{where} must be an object")
        if tool.get("type", "function") != "function":
            raise BadInput(f"{where}.type must be 'function', got {tool.get('type')!r}")
        function = tool.get("function")
        if not isinstance(function, Mapping):
            raise BadInput(f"{where}.function must be an object with a name")
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise BadInput(f"{where}.function.name is missing")
        if not _TOOL_NAME.match(name):
            raise BadInput(f"{where}.function.name {name!r} must be 1-64 letters, digits, '_' or '-'")
        if name in names:
            raise BadInput(f"{where}.function.name {name!r} is a duplicate: tool names must be unique")
        if "description" in function and not isinstance(function["description"], str | None):
            raise BadInput(f"{where}.function.description must be a string")
        if function.get("parameters") is not None and not isinstance(function["parameters"], Mapping):
            raise BadInput(f"{where}.function.parameters must be a JSON Schema object")
        names.append(name)
    return names


def _check_tool_choice(tool_choice: Any, names: list[str]) -> str | None:
    """The tool the model must call (named tool_choice), else None; raises BadInput when invalid."""
    if tool_choice is None or tool_choice in ("none", "auto"):
        return None
    if tool_choice == "required":
        if not names:
            raise BadInput("tool_choice 'required' needs a non-empty tools list")
        return None
    if isinstance(tool_choice, Mapping):
        function = tool_choice.get("function")
        name = function.get("name") if isinstance(function, Mapping) else None
        if tool_choice.get("type") != "function" or not isinstance(name, str):
            raise BadInput(
                "tool_choice must be 'none', 'auto', 'required' or {'type': 'function', 'function': {'name': ...}}"
            )
        if name not in names:
            raise BadInput(f"tool_choice.function.name {name!r} is not one of the tools: {names}")
        return name
    raise BadInput(f"tool_choice {tool_choice!r} must be 'none', 'auto', 'required' or a named function")


# --- rendering ---------------------------------------------------------------------------------


def render_tool_messages(
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None,
    tool_choice: str | dict[str, Any] | None,
    recall: Callable[[dict[str, Any]], str | None] | None = None,
    tool_format: ToolFormat = "hermes",
) -> list[dict[str, Any]]:
    """OpenAI chat ``messages`` as plain ``{"role", "content": str}`` messages for a template without tools.

    All system (and developer) messages are merged, in order, into one system message at the front, followed
    by the tool instructions when tools are offered (the system message is created if absent). Content given
    as a list of ``{"type": "text"}`` parts is joined into one string. Assistant tool calls and tool results
    are written in ``tool_format``; consecutive tool results share one user message.

    Args:
        messages: the request's messages (roles system, developer, user, assistant, tool).
        tools: the request's OpenAI ``tools`` list, or None.
        tool_choice: ``"none"``, ``"auto"``, ``"required"``, ``{"type": "function", "function": {"name"}}``
            or None (same as ``"auto"``).
        recall: given an assistant message with ``tool_calls``, the text the model really produced for it
            (used verbatim, so the prompt repeats the model's own tokens), or None to render it.
        tool_format: ``"hermes"`` or ``"pythonic"`` (module docstring).

    Raises:
        BadInput: a message, tool or ``tool_choice`` is invalid (the message names the field).
    """
    names = _check_tools(tools)
    forced = _check_tool_choice(tool_choice, names)
    if not isinstance(messages, list):
        raise BadInput("messages must be a list of message objects")
    text_format = _FORMATS[tool_format]

    system: list[str] = []
    turns: list[dict[str, Any]] = []
    call_names: dict[str, str] = {}  # tool call id -> tool name, to name the tool in its response
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, Mapping):
            raise BadInput(f"{where} must be an object with a role")
        role = message.get("role")
        if role not in _ROLES:
            raise BadInput(f"{where}.role {role!r} must be one of {', '.join(_ROLES)}")
        if role in ("system", "developer"):
            system.append(_text_of(message, where))
        elif role == "user":
            turns.append({"role": "user", "content": _text_of(message, where)})
        elif role == "assistant":
            content = _render_assistant(message, where, recall, call_names, text_format)
            turns.append({"role": "assistant", "content": content})
        else:
            block = _render_tool_result(message, where, call_names, text_format)
            if turns and turns[-1].get("_tool_results"):
                turns[-1]["content"] += "\n" + block
            else:
                turns.append({"role": "user", "content": block, "_tool_results": True})

    if names and tool_choice != "none":
        system.append(text_format.instructions(tools or [], _choice_line(tool_choice, forced)))
    rendered = [{"role": "system", "content": "\n\n".join(system)}] if system else []
    rendered += [{"role": turn["role"], "content": turn["content"]} for turn in turns]
    return rendered


def _choice_line(tool_choice: Any, forced: str | None) -> str:
    """The last line of the tool instructions: what ``tool_choice`` asks of the model."""
    if forced is not None:
        return f'You must call the tool "{forced}".'
    if tool_choice == "required":
        return "You must call a tool."
    return "If no tool is needed, answer directly."


def _render_assistant(
    message: Mapping[str, Any],
    where: str,
    recall: Callable[[dict[str, Any]], str | None] | None,
    call_names: dict[str, str],
    text_format: ToolTextFormat,
) -> str:
    content = _text_of(message, where, optional=True)
    calls = message.get("tool_calls") or []
    if not isinstance(calls, list):
        raise BadInput(f"{where}.tool_calls must be a list")
    checked = []
    for j, call in enumerate(calls):
        name, arguments, call_id = _check_call(call, f"{where}.tool_calls[{j}]")
        if call_id:
            call_names[call_id] = name
        checked.append((name, arguments))
    if calls and recall is not None:
        recalled = recall(dict(message))
        if recalled is not None:
            return recalled
    return text_format.assistant_turn(content, checked)


def _check_call(call: Any, where: str) -> tuple[str, dict[str, Any], str | None]:
    """(name, arguments object, id) of an OpenAI tool call in the request's history."""
    function = call.get("function") if isinstance(call, Mapping) else None
    if not isinstance(function, Mapping) or not isinstance(function.get("name"), str) or not function["name"]:
        raise BadInput(f"{where}.function.name is missing")
    raw = function.get("arguments")
    try:
        arguments = json.loads(raw) if isinstance(raw, str) else raw
    except json.JSONDecodeError as exc:
        raise BadInput(f"{where}.function.arguments is not valid JSON: {exc.msg}") from None
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        raise BadInput(f"{where}.function.arguments must be a JSON object")
    call_id = call.get("id")
    return function["name"], arguments, call_id if isinstance(call_id, str) else None


def _render_tool_result(
    message: Mapping[str, Any], where: str, call_names: dict[str, str], text_format: ToolTextFormat
) -> str:
    # OpenAI's schema makes tool_call_id optional: without it the result is rendered unlinked to its call.
    raw_id = message.get("tool_call_id")
    call_id = raw_id if isinstance(raw_id, str) and raw_id else None
    name = message.get("name") if isinstance(message.get("name"), str) else call_names.get(call_id or "")
    return text_format.result(name or None, call_id, _text_of(message, where))


def _text_of(message: Mapping[str, Any], where: str, *, optional: bool = False) -> str:
    """A message's content as one string: a string as is, text parts joined."""
    content = message.get("content")
    if content is None:
        if optional:
            return ""
        raise BadInput(f"{where}.content is missing")
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise BadInput(f"{where}.content must be a string or a list of text parts")
    texts = []
    for k, part in enumerate(content):
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind != "text" or not isinstance(part.get("text"), str):
            raise BadInput(f"{where}.content[{k}] is a {kind!r} part: this model reads text parts only")
        texts.append(part["text"])
    return "".join(texts)


# --- parsing -----------------------------------------------------------------------------------


def parse_tool_calls(text: str, tools: list[dict[str, Any]] | None, tool_format: ToolFormat = "hermes") -> ParsedReply:
    """Split a model reply into content and OpenAI ``tool_calls`` (format and leniency: ``tool_formats.py``).

    Args:
        text: the model's reply, decoded without special tokens.
        tools: the tools the model was offered (:func:`active_tools`); None or empty turns parsing off
            (``tool_choice="none"``), so the whole text is content.
        tool_format: the format the prompt asked for, ``"hermes"`` or ``"pythonic"``.

    Raises:
        BadInput: ``tools`` is invalid.
    """
    names = _check_tools(tools)
    if not names:
        return ParsedReply(content=text or None, tool_calls=[])
    try:
        found = _FORMATS[tool_format].find_calls(text, names)
    except Malformed as exc:
        return ParsedReply(content=text or None, tool_calls=[], malformed=str(exc))
    if found is None:
        return ParsedReply(content=text or None, tool_calls=[])
    content, calls = found
    return ParsedReply(content=content or None, tool_calls=calls)
