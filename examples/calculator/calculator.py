"""A safe arithmetic evaluator: the calculator tool of the demo agent.

Model output is untrusted, so the expression is parsed with :mod:`ast` and only numbers, + - * / // %
(and unary signs, parentheses) are evaluated: no names, calls or attributes, and limits on size so a
tiny model cannot make the tool hang (``9**9**9``) or eat memory.
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable

MAX_EXPRESSION_CHARS = 200
MAX_MAGNITUDE = 10**12  # any intermediate result beyond this is refused

_BINARY: dict[type[ast.operator], Callable[[float, float], float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
}
_UNARY: dict[type[ast.unaryop], Callable[[float], float]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}


class CalculatorError(ValueError):
    """The expression is not plain arithmetic, or cannot be evaluated (division by zero, too large)."""


def evaluate(expression: str) -> int | float:
    """The value of an arithmetic expression such as ``"12 + 7 * (3 - 1)"``.

    ``x`` and the multiplication sign are read as ``*``, the division sign as ``/``; a whole-number result is
    returned as an int.

    Raises:
        CalculatorError: anything but numbers, + - * / // % and parentheses; division by zero; an
            over-long expression or a result larger than ``MAX_MAGNITUDE``.
    """
    if not isinstance(expression, str):
        raise CalculatorError(f"expression must be a string, got {type(expression).__name__}")
    text = expression.strip().replace("\u00d7", "*").replace("\u00f7", "/").replace("x", "*").replace("X", "*")
    if not text:
        raise CalculatorError("empty expression")
    if len(text) > MAX_EXPRESSION_CHARS:
        raise CalculatorError(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        raise CalculatorError(f"not an arithmetic expression: {expression!r}") from exc
    value = _eval(tree.body)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _eval(node: ast.expr) -> int | float:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return _checked(node.value)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _checked(_UNARY[type(node.op)](_eval(node.operand)))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval(node.left), _eval(node.right)
        try:
            return _checked(_BINARY[type(node.op)](left, right))
        except ZeroDivisionError as exc:
            raise CalculatorError("division by zero") from exc
    raise CalculatorError(f"unsupported element {type(node).__name__}: only numbers and + - * / // % ( )")


def _checked(value: float) -> int | float:
    if abs(value) > MAX_MAGNITUDE or value != value:  # value != value: NaN
        raise CalculatorError(f"result out of range (limit {MAX_MAGNITUDE})")
    return value
