"""Arithmetic word problems for the calculator demo, generated from a seed.

Each task is a short story with one operation on two small numbers ("Mia has 23 stickers. She gets 14
more. How many stickers does Mia have now?") and an integer answer. The same ``(split, n, seed)``
always gives the same tasks, on any machine.

The train and validation splits never share a problem: every question belongs to exactly one split,
decided by a stable hash of its text, so no choice of seeds can leak a validation question into training.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Any, Literal

Split = Literal["train", "val"]
Style = Literal["word", "expression"]
SPLITS: tuple[Split, ...] = ("train", "val")
VAL_SHARE = 0.2  # share of the problem space that belongs to the validation split

NAMES = ("Mia", "Tom", "Ana", "Leo", "Sara", "Ben", "Emma", "Omar", "Lily", "Max", "Nora", "Sam")
ITEMS = ("apples", "stickers", "marbles", "books", "coins", "pencils", "cookies", "cards", "shells", "stamps")


@dataclass(frozen=True)
class _Template:
    op: Literal["+", "-", "*"]
    text: str  # format fields: name, item, a, b


TEMPLATES = (
    _Template("+", "{name} has {a} {item}. {name} gets {b} more. How many {item} does {name} have now?"),
    _Template("+", "There are {a} {item} in a box and {b} {item} on the table. How many {item} are there in all?"),
    _Template("+", "{name} collected {a} {item} on Monday and {b} {item} on Tuesday. How many {item} in total?"),
    _Template("-", "{name} has {a} {item}. {name} gives away {b} of them. How many {item} are left?"),
    _Template("-", "A shop had {a} {item}. It sold {b}. How many {item} does the shop have now?"),
    _Template("*", "{name} buys {a} bags with {b} {item} in each bag. How many {item} does {name} have?"),
)


def make_tasks(
    split: Split,
    n: int,
    seed: int = 0,
    *,
    max_number: int = 50,
    ops: str = "+-",
    max_product_factor: int = 9,
    style: Style = "word",
    temperature: float | None = None,
) -> list[dict[str, Any]]:
    """``n`` distinct word problems of ``split``, the same for the same arguments.

    Args:
        split: "train" or "val"; the two never share a problem.
        n: how many tasks (distinct within the list).
        seed: which tasks; different seeds give (mostly) different tasks of the same split.
        max_number: largest operand of + and - (operands are drawn from 2..max_number).
        ops: which operations to use, any of "+", "-", "*".
        max_product_factor: largest operand of "*" (kept small so products stay easy).
        style: "word" for a short story, "expression" for the bare question ``What is 14 + 7?`` (easier
            for a tiny model: higher untrained success when sampling at temperature 1).
        temperature: when given, each task asks the agent to sample at it (e.g. 0 for greedy validation).

    Returns:
        dicts with ``question`` (str), ``answer`` (int), ``op``, ``a``, ``b``, ``split`` and ``id``
        (a stable identifier of the problem, usable as the GRPO group id).

    Raises:
        ValueError: an unknown split or operation, or ``n`` larger than the problems available.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not ops or set(ops) - {"+", "-", "*"}:
        raise ValueError(f"ops must be a non-empty string of '+', '-', '*', got {ops!r}")
    if style not in ("word", "expression"):
        raise ValueError(f"style must be 'word' or 'expression', got {style!r}")
    if max_number < 3 or max_product_factor < 2:
        raise ValueError("max_number must be >= 3 and max_product_factor >= 2")
    templates = [t for t in TEMPLATES if t.op in ops]
    rng = random.Random(f"calculator/{split}/{seed}")
    tasks: list[dict[str, Any]] = []
    seen: set[str] = set()
    budget = 200 * n + 1000  # draws before giving up: the split's problem space may be too small
    while len(tasks) < n:
        budget -= 1
        if budget < 0:
            raise ValueError(f"could not draw {n} distinct {split} problems; widen max_number or ops")
        template = rng.choice(templates)
        name, item = rng.choice(NAMES), rng.choice(ITEMS)
        a, b = _operands(rng, template.op, max_number, max_product_factor)
        # The question text is the key: templates that use no name must not count as distinct problems.
        if style == "word":
            question = template.text.format(name=name, item=item, a=a, b=b)
        else:
            question = f"What is {a} {template.op} {b}?"
        if question in seen or _split_of(question) != split:
            continue
        seen.add(question)
        tasks.append(
            {
                "id": hashlib.sha256(question.encode()).hexdigest()[:12],
                "question": question,
                "answer": _apply(template.op, a, b),
                "op": template.op,
                "a": a,
                "b": b,
                "split": split,
            }
        )
        if temperature is not None:
            tasks[-1]["temperature"] = temperature
    return tasks


def _operands(rng: random.Random, op: str, max_number: int, max_factor: int) -> tuple[int, int]:
    if op == "*":
        return rng.randint(2, max_factor), rng.randint(2, max_factor)
    a, b = rng.randint(2, max_number), rng.randint(2, max_number)
    if op == "-" and a < b:  # answers stay non-negative
        a, b = b, a
    return a, b


def _apply(op: str, a: int, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def _split_of(question: str) -> Split:
    """The split a problem belongs to: a stable hash, independent of seeds and of Python's hash salt."""
    bucket = int.from_bytes(hashlib.sha256(question.encode()).digest()[:8], "big") / 2**64
    return "val" if bucket < VAL_SHARE else "train"


ToolKind = Literal["product", "long_product", "sum3"]
TOOL_KINDS: tuple[ToolKind, ...] = ("product", "long_product", "sum3")


def make_tool_tasks(
    split: Split,
    n: int,
    seed: int = 0,
    *,
    kinds: tuple[ToolKind, ...] | list[ToolKind] = TOOL_KINDS,
    temperature: float | None = None,
) -> list[dict[str, Any]]:
    """``n`` distinct arithmetic problems a 135M model cannot do in its head, the same for the same arguments.

    Kinds: ``product`` (two 2-digit numbers, ``What is 51 * 29?``), ``long_product`` (a 3-digit by a 2-digit
    number) and ``sum3`` (three 3-digit numbers). Without the calculator SmolLM2-135M gets almost none right,
    so a reward has to come through a tool call, its result and a final answer. Splits are disjoint as in
    :func:`make_tasks` (a stable hash of the question).

    Returns:
        dicts with ``question``, ``answer`` (int), ``kind``, ``split`` and ``id``; ``temperature`` when given.

    Raises:
        ValueError: an unknown split or kind, or ``n`` < 0.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not kinds or set(kinds) - set(TOOL_KINDS):
        raise ValueError(f"kinds must be a non-empty list of {TOOL_KINDS}, got {kinds!r}")
    rng = random.Random(f"calculator-tool/{split}/{seed}")
    tasks: list[dict[str, Any]] = []
    seen: set[str] = set()
    while len(tasks) < n:  # the problem space (millions) is far larger than any n asked of it
        kind = rng.choice(list(kinds))
        if kind == "product":
            terms, op = [rng.randint(11, 99), rng.randint(11, 99)], "*"
        elif kind == "long_product":
            terms, op = [rng.randint(101, 999), rng.randint(11, 99)], "*"
        else:
            terms, op = [rng.randint(101, 999) for _ in range(3)], "+"
        question = f"What is {f' {op} '.join(map(str, terms))}?"
        if question in seen or _split_of(question) != split:
            continue
        seen.add(question)
        answer = terms[0] * terms[1] if op == "*" else sum(terms)
        task: dict[str, Any] = {
            "id": hashlib.sha256(question.encode()).hexdigest()[:12],
            "question": question,
            "answer": answer,
            "kind": kind,
            "split": split,
        }
        if temperature is not None:
            task["temperature"] = temperature
        tasks.append(task)
    return tasks
