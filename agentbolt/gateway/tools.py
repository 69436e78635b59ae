"""Tool calling for models whose chat template knows nothing of tools (SmolLM2 is one).

The gateway renders an OpenAI chat request into plain system/user/assistant messages with
:func:`render_tool_messages`, and turns the model's reply back into OpenAI ``tool_calls`` with
:func:`parse_tool_calls`.

The text format
---------------
The system message lists each tool as one line of compact JSON (``{"name":..,"description":..,"parameters":..}``)
and tells the model to call a tool by writing, one per call::

    <tool_call>{"name": "add", "arguments": {"a": 2, "b": 3}}</tool_call>

Assistant turns that made tool calls are rendered back in exactly that format (content first, then one
``<tool_call>`` line per call), so a model that imitates earlier turns emits calls that parse. Tool results
come back as a user message, one block per result (consecutive results share one message)::

    <tool_response name="add" id="call_1f2e...">
    5
    </tool_response>

``tool_choice``: ``"none"`` renders no tools and turns parsing off (pass ``tools=None`` to the parser);
``"auto"`` (the default) lets the model choose; ``"required"`` and ``{"type": "function", "function":
{"name": ...}}`` add a line saying it must call a tool (that one). The model is only told: nothing forces it.

What the parser accepts (small models are sloppy)
-------------------------------------------------
- Any text around the calls (returned as ``content``), several calls, whitespace anywhere.
- A missing ``</tool_call>`` before the next ``<tool_call>`` or at the end of the output.
- A JSON list of calls inside one tag (SmolLM2's own function-calling format), a ``` fence inside the tag.
- ``arguments`` given as a JSON string holding an object, ``"parameters"`` instead of ``"arguments"``,
  and no arguments at all (taken as ``{}``).
- Single-quoted Python literals (``{'name': 'add', 'arguments': {'a': 2}}``): read with
  :func:`ast.literal_eval`, which evaluates literals only, never code.
- A reply that is nothing but a call object (or a list of them, optionally in a ``` fence) without the tags:
  ``{"name": "add", "arguments": {...}}``. Only a whole reply counts; JSON inside prose is left as text.

An *attempted* call is a ``<tool_call>`` or ``</tool_call>`` tag, or such a bare call object. An attempt that
does not parse, names an unknown tool, or has arguments that are not an object makes the whole reply
malformed: ``ParsedReply.malformed`` says why, no tool calls are returned, and the raw text is the content
(the gateway flags it on the span: an AIR signal). Arguments are not checked against the tool's schema: the
tool reports bad arguments itself, which is the signal the agent and the trainer should see.
"""

from __future__ import annotations

import ast
import json
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from agentbolt.errors import BadInput

__all__ = ["ParsedReply", "active_tools", "parse_tool_calls", "render_tool_messages"]

CALL_OPEN = "<tool_call>"
CALL_CLOSE = "</tool_call>"
RESPONSE_OPEN = "<tool_response"
RESPONSE_CLOSE = "</tool_response>"

_TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # OpenAI's rule for function names
_FENCE = re.compile(r"^```[A-Za-z]*\s*(.*?)\s*```$", re.DOTALL)
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
) -> list[dict[str, Any]]:
    """OpenAI chat ``messages`` as plain ``{"role", "content": str}`` messages for a template without tools.

    All system (and developer) messages are merged, in order, into one system message at the front, followed
    by the tool instructions when tools are offered (the system message is created if absent). Content given
    as a list of ``{"type": "text"}`` parts is joined into one string. Assistant tool calls and tool results
    are written in the format of the module docstring; consecutive tool results share one user message.

    Args:
        messages: the request's messages (roles system, developer, user, assistant, tool).
        tools: the request's OpenAI ``tools`` list, or None.
        tool_choice: ``"none"``, ``"auto"``, ``"required"``, ``{"type": "function", "function": {"name"}}``
            or None (same as ``"auto"``).
        recall: given an assistant message with ``tool_calls``, the text the model really produced for it
            (used verbatim, so the prompt repeats the model's own tokens), or None to render it.

    Raises:
        BadInput: a message, tool or ``tool_choice`` is invalid (the message names the field).
    """
    names = _check_tools(tools)
    forced = _check_tool_choice(tool_choice, names)
    if not isinstance(messages, list):
        raise BadInput("messages must be a list of message objects")

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
            turns.append({"role": "assistant", "content": _render_assistant(message, where, recall, call_names)})
        else:
            block = _render_tool_result(message, where, call_names)
            if turns and turns[-1].get("_tool_results"):
                turns[-1]["content"] += "\n" + block
            else:
                turns.append({"role": "user", "content": block, "_tool_results": True})

    if names and tool_choice != "none":
        system.append(_instructions(tools or [], tool_choice, forced))
    rendered = [{"role": "system", "content": "\n\n".join(system)}] if system else []
    rendered += [{"role": turn["role"], "content": turn["content"]} for turn in turns]
    return rendered


def _instructions(tools: list[dict[str, Any]], tool_choice: Any, forced: str | None) -> str:
    """The system-prompt block that lists the tools and says how to call them (short: small models read it)."""
    lines = ["You can call these tools:"]
    for tool in tools:
        function = tool["function"]
        entry: dict[str, Any] = {"name": function["name"]}
        if function.get("description"):
            entry["description"] = function["description"]
        entry["parameters"] = function.get("parameters") or {"type": "object", "properties": {}}
        lines.append(json.dumps(entry, ensure_ascii=False, separators=(",", ":")))
    lines.append(
        f"To call a tool, write {CALL_OPEN}" + '{"name": "TOOL", "arguments": {...}}' + f"{CALL_CLOSE}, one per call. "
        f"Results come back in {RESPONSE_OPEN}> tags."
    )
    if forced is not None:
        lines.append(f'You must call the tool "{forced}".')
    elif tool_choice == "required":
        lines.append("You must call a tool.")
    else:
        lines.append("If no tool is needed, answer directly.")
    return "\n".join(lines)


def _render_assistant(
    message: Mapping[str, Any],
    where: str,
    recall: Callable[[dict[str, Any]], str | None] | None,
    call_names: dict[str, str],
) -> str:
    content = _text_of(message, where, optional=True)
    calls = message.get("tool_calls") or []
    if not isinstance(calls, list):
        raise BadInput(f"{where}.tool_calls must be a list")
    lines = [content] if content else []
    for j, call in enumerate(calls):
        name, arguments, call_id = _check_call(call, f"{where}.tool_calls[{j}]")
        if call_id:
            call_names[call_id] = name
        lines.append(format_tool_call(name, arguments))
    if calls and recall is not None:
        recalled = recall(dict(message))
        if recalled is not None:
            return recalled
    return "\n".join(lines)


def format_tool_call(name: str, arguments: Mapping[str, Any]) -> str:
    """One call in the format the model is asked to emit: ``<tool_call>{"name": .., "arguments": ..}</tool_call>``."""
    return CALL_OPEN + json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False) + CALL_CLOSE


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


def _render_tool_result(message: Mapping[str, Any], where: str, call_names: dict[str, str]) -> str:
    call_id = message.get("tool_call_id")
    if not isinstance(call_id, str) or not call_id:
        raise BadInput(f"{where}.tool_call_id is missing: a tool message answers one tool call")
    name = message.get("name") if isinstance(message.get("name"), str) else call_names.get(call_id)
    attributes = (f" name={json.dumps(name)}" if name else "") + f" id={json.dumps(call_id)}"
    return f"{RESPONSE_OPEN}{attributes}>\n{_text_of(message, where)}\n{RESPONSE_CLOSE}"


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


class _Malformed(Exception):
    """An attempted tool call that cannot be used; the message is the short reason."""


def parse_tool_calls(text: str, tools: list[dict[str, Any]] | None) -> ParsedReply:
    """Split a model reply into content and OpenAI ``tool_calls`` (format and leniency: module docstring).

    Args:
        text: the model's reply, decoded without special tokens.
        tools: the tools the model was offered (:func:`active_tools`); None or empty turns parsing off
            (``tool_choice="none"``), so the whole text is content.

    Raises:
        BadInput: ``tools`` is invalid.
    """
    names = _check_tools(tools)
    if not names:
        return ParsedReply(content=text or None, tool_calls=[])
    try:
        found = _find_calls(text, names)
    except _Malformed as exc:
        return ParsedReply(content=text or None, tool_calls=[], malformed=str(exc))
    if found is None:
        return ParsedReply(content=text or None, tool_calls=[])
    content, calls = found
    return ParsedReply(content=content or None, tool_calls=calls)


def _find_calls(text: str, names: list[str]) -> tuple[str, list[dict[str, Any]]] | None:
    """(content, tool calls) when ``text`` attempts calls, None when it does not; raises _Malformed."""
    if CALL_OPEN not in text:
        if CALL_CLOSE in text:
            raise _Malformed(f"{CALL_CLOSE} without {CALL_OPEN}")
        value = _bare_call(text)
        if value is None:
            return None
        return "", _calls_of(value, names)

    outside: list[str] = []
    calls: list[dict[str, Any]] = []
    pos = 0
    while (start := text.find(CALL_OPEN, pos)) != -1:
        outside.append(text[pos:start])
        body_start = start + len(CALL_OPEN)
        close = text.find(CALL_CLOSE, body_start)
        reopen = text.find(CALL_OPEN, body_start)
        if close == -1 or (reopen != -1 and reopen < close):
            # no closing tag before the next call or the end: the body runs up to there
            end = len(text) if reopen == -1 else reopen
            pos = end
        else:
            end = close
            pos = close + len(CALL_CLOSE)
        try:
            value = _load(text[body_start:end])
        except ValueError:
            raise _Malformed(f"tool call {len(calls) + 1} is not valid JSON") from None
        calls += _calls_of(value, names)
    tail = text[pos:]
    if CALL_CLOSE in tail:
        raise _Malformed(f"{CALL_CLOSE} without {CALL_OPEN}")
    outside.append(tail)
    return "\n".join(part.strip() for part in outside if part.strip()), calls


def _bare_call(text: str) -> Any:
    """The call(s) when the whole reply is a call object or a list of them, without tags; else None."""
    body = text.strip()
    fenced = _FENCE.match(body)
    if fenced:
        body = fenced.group(1)
    if not body.startswith(("{", "[")):
        return None
    try:
        value = _load(body)
    except ValueError:
        return None
    items = value if isinstance(value, list) else [value]
    looks_like_calls = items and all(
        isinstance(item, dict) and "name" in item and ("arguments" in item or "parameters" in item) for item in items
    )
    return value if looks_like_calls else None


def _load(body: str) -> Any:
    """JSON (or, failing that, a Python literal) from the text between the tags; raises ValueError."""
    body = body.strip()
    fenced = _FENCE.match(body)
    if fenced:
        body = fenced.group(1)
    try:
        return json.loads(body, parse_constant=_reject_constant)
    except ValueError:
        pass
    try:
        return ast.literal_eval(body)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        raise ValueError("neither JSON nor a Python literal") from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _calls_of(value: Any, names: list[str]) -> list[dict[str, Any]]:
    """OpenAI tool calls from one parsed tag body (a call object or a list of them); raises _Malformed."""
    items = value if isinstance(value, list) else [value]
    if not items:
        raise _Malformed("empty list of tool calls")
    calls = []
    for item in items:
        if not isinstance(item, dict):
            raise _Malformed("a tool call must be an object with a name and arguments")
        name = item.get("name")
        if not isinstance(name, str) or not name:
            raise _Malformed("a tool call has no tool name")
        if name not in names:
            raise _Malformed(f"unknown tool {name[:64]!r}")
        arguments = item["arguments"] if "arguments" in item else item.get("parameters")
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments, parse_constant=_reject_constant) if arguments.strip() else None
            except ValueError:
                raise _Malformed(f"arguments of {name!r} are not valid JSON") from None
        if arguments is None:
            arguments = {}
        if not isinstance(arguments, dict):
            raise _Malformed(f"arguments of {name!r} are not a JSON object")
        try:
            encoded = json.dumps(arguments, ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError):
            raise _Malformed(f"arguments of {name!r} are not JSON values") from None
        calls.append(
            {
                "id": "call_" + secrets.token_hex(12),
                "type": "function",
                "function": {"name": name, "arguments": encoded},
            }
        )
    return calls
