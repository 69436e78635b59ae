"""The two text formats of tool calls for templates without tools: ``hermes`` and ``pythonic``.

``tools.py`` walks the conversation and chooses the format; each format here writes the tool list, an
assistant turn's calls and a tool's result, and finds the calls in a reply. Both return OpenAI tool calls
(``arguments`` a JSON string) and raise :class:`Malformed` for an attempted call that cannot be used.

hermes
------
The system message lists each tool as one line of compact JSON (``{"name":..,"description":..,"parameters":..}``)
and tells the model to call a tool by writing, one per call::

    <tool_call>{"name": "add", "arguments": {"a": 2, "b": 3}}</tool_call>

Assistant turns that made tool calls are rendered back in exactly that format (content first, then one
``<tool_call>`` line per call). A tool result is one block (consecutive results share one user message)::

    <tool_response name="add" id="call_1f2e...">
    5
    </tool_response>

The parser accepts (small models are sloppy): any text around the calls (returned as content), several
calls, whitespace anywhere; a missing ``</tool_call>`` before the next ``<tool_call>`` or at the end; a JSON
list of calls inside one tag (SmolLM2's own function-calling format), a ``` fence inside the tag;
``arguments`` given as a JSON string holding an object, ``"parameters"`` instead of ``"arguments"``, no
arguments at all (``{}``); single-quoted Python literals (read with :func:`ast.literal_eval`, which evaluates
literals only, never code); a reply that is nothing but a call object (or a list of them, optionally in a
``` fence) without the tags. Only a whole reply counts: JSON inside prose is left as text. An *attempt* is a
``<tool_call>`` or ``</tool_call>`` tag, or such a bare call object.

pythonic
--------
What Llama 3.2/4 emit (vLLM's ``pythonic`` parser): a Python list of calls. The system message gives each
tool one line with its description and its own call, with a placeholder for each required parameter
(``"..."`` for a string, ``[...]`` an array, ``{...}`` an object, ``...`` anything else)::

    calculator: Evaluate an arithmetic expression. To use it, reply with only: [calculator(expression="...")]

An assistant turn with calls is its content (if any), then one list of all its calls, arguments as Python
literals (a key that is not a Python name goes in ``**{"key": value}``)::

    [add(a=2, b=3), multiply(a=4, b=5)]

A tool result is one line ``NAME result: CONTENT`` (consecutive results share one user message).

The parser: the reply (whitespace and an optional ``` fence stripped) is or starts with a list of calls
``[...]``, or is a bare call ``name(...)``; more lists of calls may follow, and text before or after them is
the content. Each list is read with :func:`ast.parse` and each argument with :func:`ast.literal_eval` on its
node: only calls whose function is the plain name of an offered tool, keyword arguments (or ``**`` a literal
dict) whose values are literals. Code is never evaluated. A missing closing ``]`` and/or ``)`` at the very
end is tolerated. An *attempt* is a reply that starts with ``[name(``, ``[toolname`` or ``toolname(``, or
contains ``[toolname(`` for an offered tool; it is malformed when it does not parse, names an unknown tool,
passes positional arguments, or passes something that is not a literal (``expression=open('x')``) or the
``...`` placeholder itself. Calls in the hermes format are accepted too (a model may know that one).
"""

from __future__ import annotations

import ast
import json
import keyword
import re
import secrets
from collections.abc import Mapping
from typing import Any, Protocol

CALL_OPEN = "<tool_call>"
CALL_CLOSE = "</tool_call>"
RESPONSE_OPEN = "<tool_response"
RESPONSE_CLOSE = "</tool_response>"

_FENCE = re.compile(r"^```[A-Za-z]*\s*(.*?)\s*```$", re.DOTALL)

Calls = list[tuple[str, dict[str, Any]]]  # (tool name, arguments object) of an assistant turn, in order


class Malformed(Exception):
    """An attempted tool call that cannot be used; the message is the short reason."""


class ToolTextFormat(Protocol):
    """How tools, calls and results are written into the prompt, and how calls are read from a reply."""

    def instructions(self, tools: list[dict[str, Any]], choice_line: str) -> str:
        """The system-prompt block offering ``tools`` (validated), ending with the ``tool_choice`` line."""
        ...

    def assistant_turn(self, content: str, calls: Calls) -> str:
        """An assistant message that made ``calls`` (content first, if any)."""
        ...

    def result(self, name: str | None, call_id: str | None, content: str) -> str:
        """One tool result (``name`` None when the call is not known, ``call_id`` None when the message has none)."""
        ...

    def find_calls(self, text: str, names: list[str]) -> tuple[str, list[dict[str, Any]]] | None:
        """(content, OpenAI tool calls) when ``text`` attempts calls, None when it does not; raises Malformed."""
        ...


def openai_call(name: str, arguments: Any) -> dict[str, Any]:
    """An OpenAI tool call with a fresh id; raises Malformed when ``arguments`` is not a JSON object."""
    if not isinstance(arguments, dict):
        raise Malformed(f"arguments of {name!r} are not a JSON object")
    try:
        encoded = json.dumps(arguments, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError):
        raise Malformed(f"arguments of {name!r} are not JSON values") from None
    return {"id": "call_" + secrets.token_hex(12), "type": "function", "function": {"name": name, "arguments": encoded}}


# --- hermes ------------------------------------------------------------------------------------------


class Hermes:
    """``<tool_call>{"name": .., "arguments": ..}</tool_call>``: the format of the module docstring."""

    def instructions(self, tools: list[dict[str, Any]], choice_line: str) -> str:
        lines = ["You can call these tools:"]
        for tool in tools:
            function = tool["function"]
            entry: dict[str, Any] = {"name": function["name"]}
            if function.get("description"):
                entry["description"] = function["description"]
            entry["parameters"] = function.get("parameters") or {"type": "object", "properties": {}}
            lines.append(json.dumps(entry, ensure_ascii=False, separators=(",", ":")))
        lines.append(
            f"To call a tool, write {CALL_OPEN}" + '{"name": "TOOL", "arguments": {...}}' + f"{CALL_CLOSE}, one per "
            f"call. Results come back in {RESPONSE_OPEN}> tags."
        )
        lines.append(choice_line)
        return "\n".join(lines)

    def assistant_turn(self, content: str, calls: Calls) -> str:
        lines = [content] if content else []
        lines += [format_tool_call(name, arguments) for name, arguments in calls]
        return "\n".join(lines)

    def result(self, name: str | None, call_id: str | None, content: str) -> str:
        attributes = (f" name={json.dumps(name)}" if name else "") + (f" id={json.dumps(call_id)}" if call_id else "")
        return f"{RESPONSE_OPEN}{attributes}>\n{content}\n{RESPONSE_CLOSE}"

    def find_calls(self, text: str, names: list[str]) -> tuple[str, list[dict[str, Any]]] | None:
        if CALL_OPEN not in text:
            if CALL_CLOSE in text:
                raise Malformed(f"{CALL_CLOSE} without {CALL_OPEN}")
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
                raise Malformed(f"tool call {len(calls) + 1} is not valid JSON") from None
            calls += _calls_of(value, names)
        tail = text[pos:]
        if CALL_CLOSE in tail:
            raise Malformed(f"{CALL_CLOSE} without {CALL_OPEN}")
        outside.append(tail)
        return "\n".join(part.strip() for part in outside if part.strip()), calls


def format_tool_call(name: str, arguments: Mapping[str, Any]) -> str:
    """One call in the hermes format: ``<tool_call>{"name": .., "arguments": ..}</tool_call>``."""
    return CALL_OPEN + json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False) + CALL_CLOSE


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
    """OpenAI tool calls from one parsed tag body (a call object or a list of them); raises Malformed."""
    items = value if isinstance(value, list) else [value]
    if not items:
        raise Malformed("empty list of tool calls")
    calls = []
    for item in items:
        if not isinstance(item, dict):
            raise Malformed("a tool call must be an object with a name and arguments")
        name = item.get("name")
        if not isinstance(name, str) or not name:
            raise Malformed("a tool call has no tool name")
        if name not in names:
            raise Malformed(f"unknown tool {name[:64]!r}")
        arguments = item["arguments"] if "arguments" in item else item.get("parameters")
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments, parse_constant=_reject_constant) if arguments.strip() else None
            except ValueError:
                raise Malformed(f"arguments of {name!r} are not valid JSON") from None
        if arguments is None:
            arguments = {}
        calls.append(openai_call(name, arguments))
    return calls


# --- pythonic ----------------------------------------------------------------------------------------

_PLACEHOLDERS = {"string": '"..."', "array": "[...]", "object": "{...}"}  # any other type: ...
_OPEN_FENCE = re.compile(r"^```[A-Za-z]*[ \t]*\n?")
_CLOSERS = {"(": ")", "[": "]", "{": "}"}
_TOLERATED_UNCLOSED = (["["], ["("], ["[", "("])  # what may be missing at the very end: "]", ")", ")]"
_ALIAS = "__agentbolt_tool_{}__"  # stands in for a tool name that is not a Python name while parsing


class Pythonic:
    """``[name(arg=value, ...)]``: the format of the module docstring."""

    def instructions(self, tools: list[dict[str, Any]], choice_line: str) -> str:
        return "\n".join([*(_tool_line(tool["function"]) for tool in tools), choice_line])

    def assistant_turn(self, content: str, calls: Calls) -> str:
        if not calls:
            return content
        listed = ", ".join(_call_text(name, {k: _literal(v) for k, v in args.items()}) for name, args in calls)
        return f"{content}\n[{listed}]" if content else f"[{listed}]"

    def result(self, name: str | None, call_id: str | None, content: str) -> str:
        return f"{name or 'tool'} result: {content}"

    def find_calls(self, text: str, names: list[str]) -> tuple[str, list[dict[str, Any]]] | None:
        found = HERMES.find_calls(text, names)  # a model that knows the hermes format may use it
        if found is not None:
            return found
        body = text.strip()
        if body.startswith("```"):
            inner, _, after = _OPEN_FENCE.sub("", body, count=1).partition("```")
            body = inner.strip() + "\n" + after.strip()
        tool = "(?:" + "|".join(re.escape(name) for name in names) + ")"
        # At the start: [any_name(, [tool or tool( -- an attempt even when it names no offered tool. Later: [tool(
        first = re.match(rf"\[\s*(?:[\w.-]+\s*\(|{tool}(?![\w-]))|{tool}\s*\(", body)
        later = re.compile(rf"\[\s*{tool}\s*\(")
        outside: list[str] = []
        calls: list[dict[str, Any]] = []
        pos = 0
        while (match := first or later.search(body, pos)) is not None:
            first = None
            outside.append(body[pos : match.start()])
            pos, source = _extent(body, match.start())
            calls += _parse_calls(source, names)
        if not calls:
            return None
        outside.append(body[pos:])
        return "\n".join(part.strip() for part in outside if part.strip()), calls


def _tool_line(function: Mapping[str, Any]) -> str:
    """``name: description. To use it, reply with only: [name(arg="...")]`` for one tool."""
    name = function["name"]
    parameters = function.get("parameters") or {}
    properties = parameters.get("properties")
    properties = properties if isinstance(properties, Mapping) else {}
    required = parameters.get("required")
    shown = [p for p in required if isinstance(p, str)] if isinstance(required, list) else list(properties)
    call = "[" + _call_text(name, {p: _placeholder(properties.get(p)) for p in shown}) + "]"
    description = " ".join((function.get("description") or "").split())
    if description and description[-1] not in ".!?":
        description += "."
    return f"{name}: {description + ' ' if description else ''}To use it, reply with only: {call}"


def _placeholder(schema: Any) -> str:
    kind = schema.get("type") if isinstance(schema, Mapping) else None
    if isinstance(kind, list):  # e.g. ["string", "null"]
        kind = next((k for k in kind if k != "null"), None)
    return _PLACEHOLDERS.get(kind, "...") if isinstance(kind, str) else "..."


def _call_text(name: str, arguments: Mapping[str, str]) -> str:
    """``name(key=value, ...)`` from values already written as Python; other keys go in ``**{...}``."""
    named = [f"{key}={value}" for key, value in arguments.items() if _is_python_name(key)]
    others = [f"{_quoted(key)}: {value}" for key, value in arguments.items() if not _is_python_name(key)]
    if others:
        named.append("**{" + ", ".join(others) + "}")
    return f"{name}({', '.join(named)})"


def _is_python_name(name: str) -> bool:
    return name.isidentifier() and not keyword.iskeyword(name)


def _literal(value: Any) -> str:
    """A JSON value as a Python literal (strings double-quoted, as models write them)."""
    if value is True or value is False or value is None:
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_literal(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_quoted(str(k))}: {_literal(v)}" for k, v in value.items()) + "}"
    return json.dumps(value, ensure_ascii=False)  # str, int, float: JSON's spelling is Python's


def _quoted(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _extent(text: str, start: int) -> tuple[int, str]:
    """(end, source) of the bracketed call or list of calls at ``text[start]``, a missing ``]``/``)`` at the very
    end added; raises Malformed when the brackets or strings do not close."""
    stack: list[str] = []
    quote = ""
    i = start
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == "\\":
                i += 2
                continue
            if text.startswith(quote, i):
                i += len(quote)
                quote = ""
                continue
        elif ch in "\"'":
            quote = text[i : i + 3] if text[i : i + 3] in ('"""', "'''") else ch
            i += len(quote)
            continue
        elif ch in _CLOSERS:
            stack.append(ch)
        elif ch in ")]}":
            if not stack or _CLOSERS[stack.pop()] != ch:
                raise Malformed("the brackets of the tool calls do not match")
            if not stack:
                return i + 1, text[start : i + 1]
        i += 1
    if quote:
        raise Malformed("a string in the tool calls is not closed")
    if stack not in _TOLERATED_UNCLOSED:
        raise Malformed("the tool calls are cut off")
    return len(text), text[start:] + "".join(_CLOSERS[b] for b in reversed(stack))


def _parse_calls(source: str, names: list[str]) -> list[dict[str, Any]]:
    """OpenAI tool calls from ``[call, ...]`` or ``call`` (Python source); raises Malformed. Never runs code."""
    aliases = {_ALIAS.format(i): name for i, name in enumerate(names) if not _is_python_name(name)}
    for alias, name in aliases.items():
        source = re.sub(rf"(?<![\w-]){re.escape(name)}(?=\s*\()", alias, source)
    try:
        tree = ast.parse(source.strip(), mode="eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        raise Malformed("the tool calls are not valid Python calls") from None
    nodes = tree.body.elts if isinstance(tree.body, ast.List) else [tree.body]
    if not nodes:
        raise Malformed("empty list of tool calls")
    calls = []
    for node in nodes:
        if not isinstance(node, ast.Call):
            raise Malformed("a tool call must look like name(argument=value)")
        name = aliases.get(node.func.id, node.func.id) if isinstance(node.func, ast.Name) else ast.unparse(node.func)
        if name not in names:
            raise Malformed(f"unknown tool {name[:64]!r}")
        if node.args:
            raise Malformed(f"{name!r} got positional arguments: write {name}(argument=value)")
        arguments: dict[str, Any] = {}
        for kw in node.keywords:
            value = _unalias(_literal_value(kw.value, name, kw.arg or "**"), aliases)
            if kw.arg in arguments:
                raise Malformed(f"argument {kw.arg!r} of {name!r} is given twice")
            if kw.arg is not None:
                arguments[kw.arg] = value
            elif isinstance(value, dict):
                arguments.update(value)
            else:
                raise Malformed(f"** in a call of {name!r} must unpack a dict")
        calls.append(openai_call(name, arguments))
    return calls


def _literal_value(node: ast.expr, tool: str, argument: str) -> Any:
    """The literal ``node`` stands for (:func:`ast.literal_eval`: literals only); raises Malformed."""
    try:
        value = ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        raise Malformed(f"argument {argument!r} of {tool!r} is not a literal value") from None
    if value is Ellipsis:
        raise Malformed(f"argument {argument!r} of {tool!r} is the placeholder ...: give a value")
    return value


def _unalias(value: Any, aliases: Mapping[str, str]) -> Any:
    """``value`` with the stand-in tool names put back (a string argument may have held ``tool-name(``)."""
    if not aliases:
        return value
    if isinstance(value, str):
        for alias, name in aliases.items():
            value = value.replace(alias, name)
        return value
    if isinstance(value, list | tuple):
        return [_unalias(item, aliases) for item in value]
    if isinstance(value, dict):
        return {_unalias(k, aliases): _unalias(v, aliases) for k, v in value.items()}
    return value


HERMES = Hermes()
PYTHONIC = Pythonic()
