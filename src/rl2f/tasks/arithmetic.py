"""Exact arithmetic by walking Python's AST, never ``eval``: one evaluator for every layer.

Three readers need the value of an arithmetic expression: the countdown verifier (integers only,
reporting the numbers used), the leak guard and the oracle teacher (arithmetic as a critique or
an answer writes it: decimals, ``^`` powers), and the bootstrap corpus (the worked steps). They
differ in what they accept and what they report, not in how a tree is evaluated, so they share
:func:`evaluate`. Values are Fractions, not floats, so 1/3 + 1/6 equals 1/2 exactly.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from collections.abc import Callable
from fractions import Fraction

from rl2f.tasks.python_ast import parse_python

OPERATORS: dict[type[ast.operator], tuple[str, Callable[[Fraction, Fraction], Fraction]]] = {
    ast.Add: ("+", operator.add),
    ast.Sub: ("-", operator.sub),
    ast.Mult: ("*", operator.mul),
    ast.Div: ("/", operator.truediv),
}
# Powers are bounded so a critique like "9^9^9" cannot stall the guard.
MAX_EXPONENT = 64
MAX_POWER_BASE = 10**12

# Called on every node once it is evaluated, innermost first, left to right:
# (node, its value, the values of its operands).
Visit = Callable[[ast.AST, Fraction, tuple[Fraction, ...]], None]


class NotArithmetic(ValueError):
    """The expression holds something the reader does not accept (a name, a call, a power)."""


def evaluate(
    node: ast.AST, *, decimals: bool = False, powers: bool = False, visit: Visit | None = None
) -> Fraction:
    """Exact value of an arithmetic tree: integer literals (decimal ones too with ``decimals``),
    unary + and -, + - * / and (with ``powers``) bounded ``**``.

    Raises :class:`NotArithmetic` for anything else, in words a teacher can pass on, and
    ZeroDivisionError for a division by zero. An unsupported operator is refused before its
    operands are evaluated.
    """
    literals = "numbers" if decimals else "integers"
    symbols = "+ - * / ^" if powers else "+ - * /"

    def refuse(node: ast.AST) -> NotArithmetic:
        allowed = f"only {literals}, {symbols} and parentheses are allowed"
        return NotArithmetic(f"{allowed}: {ast.unparse(node)!r}")

    def walk(node: ast.AST) -> Fraction:
        operands: tuple[Fraction, ...]
        if isinstance(node, ast.Constant):
            literal = node.value
            if type(literal) is int:
                value = Fraction(literal)
            elif decimals and type(literal) is float and math.isfinite(literal):
                value = Fraction(str(literal))
            else:
                raise refuse(node)
            operands = ()
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
            operand = walk(node.operand)
            value = -operand if isinstance(node.op, ast.USub) else operand
            operands = (operand,)
        elif isinstance(node, ast.BinOp) and type(node.op) in OPERATORS:
            operands = (walk(node.left), walk(node.right))
            value = OPERATORS[type(node.op)][1](*operands)
        elif isinstance(node, ast.BinOp) and powers and isinstance(node.op, ast.Pow):
            base, exponent = operands = (walk(node.left), walk(node.right))
            if (
                exponent.denominator != 1
                or abs(exponent) > MAX_EXPONENT
                or abs(base) > MAX_POWER_BASE
            ):
                raise refuse(node)
            value = base ** int(exponent)
        else:
            raise refuse(node)
        if visit is not None:
            visit(node, value, operands)
        return value

    return walk(node)


def number_text(value: Fraction) -> str:
    """``7`` or ``7/2``: how a worked step writes a value."""
    return str(value.numerator) if value.denominator == 1 else str(value)


def evaluate_with_steps(node: ast.AST) -> tuple[Fraction, list[str]]:
    """Value of an integer arithmetic tree and its worked steps: one ``a op b = c`` line per
    operation, innermost first, so a chain ``1 - 5 - 2`` becomes its running totals. Negating
    a bracket is a step of its own: ``-(-13 - -94)`` is -81, not 81."""
    steps: list[str] = []

    def record(node: ast.AST, value: Fraction, operands: tuple[Fraction, ...]) -> None:
        if isinstance(node, ast.BinOp):
            left, right = operands
            symbol = OPERATORS[type(node.op)][0]
            steps.append(
                f"{number_text(left)} {symbol} {number_text(right)} = {number_text(value)}"
            )
        elif (
            isinstance(node, ast.UnaryOp)
            and isinstance(node.op, ast.USub)
            and not isinstance(node.operand, ast.Constant)
        ):
            steps.append(f"-({number_text(operands[0])}) = {number_text(value)}")

    return evaluate(node, visit=record), steps


_LEADING_ZEROS = re.compile(r"(?<![\d.])0+(?=\d)")


def arithmetic_value(text: str) -> Fraction | None:
    """Exact value of arithmetic as critiques and answers write it ("0.5", "2^10", "007"), or
    None for anything else (a grid, words, a call) and for what cannot be evaluated."""
    source = _LEADING_ZEROS.sub("", text.replace("^", "**").strip())
    if not source:
        return None
    try:
        tree = parse_python(source, mode="eval")
        return evaluate(tree.body, decimals=True, powers=True)
    except (SyntaxError, ValueError, ZeroDivisionError, OverflowError, RecursionError):
        return None
