"""The ``reasoning_gym`` verifier: a reasoning-gym generator's own scorer, made exact.

``task.verifier_config`` is ``{"dataset": generator name, "entry": {"question", "answer",
"metadata"}}``, the generator entry as written by :mod:`rl2f.tasks.sources.reasoning_gym`.

Two things differ from calling ``score_answer`` on the reply:

- the scorer sees only the answer span the student marked (:func:`strict_single_answer`),
  and only a score of exactly 1.0 is correct: reasoning-gym's default scorers give partial
  credit when the right answer is buried in a longer reply, which must not count;
- countdown's scorer runs sympy's ``parse_expr`` (an ``eval``) on the answer, so an answer
  reaches it only after a safe AST check proved it is plain arithmetic on integers.

Diagnostics always hold ``expected``, ``got`` and ``score``; some generators add facts a
teacher can use without giving the answer away:

- mini_sudoku: ``malformed`` (not 4 lines of 4 space-separated digits), ``violations``
  (``{"unit": "row"|"column"|"box", "index": i, "duplicates": [digits]}``), ``changed_givens``,
  ``empty_cells`` and ``wrong_cells`` (``[row, col]`` positions, 0-based);
- countdown: ``value`` (the expression's value), ``target``, ``numbers_not_allowed`` (used
  but not given, or used more often than given), ``unused`` and ``error`` (why the expression
  could not be evaluated, or None).
"""

from __future__ import annotations

import ast
import functools
import math
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from rl2f.errors import DataError
from rl2f.tasks.arithmetic import evaluate
from rl2f.tasks.python_ast import parse_python
from rl2f.tasks.schema import Task
from rl2f.tasks.verifiers.base import Verdict, register
from rl2f.tasks.verifiers.extract import strict_single_answer

# ---------------------------------------------------------------------------------------------
# Task config and the generators' scorers (shared with the maze verifier).


def read_entry(task: Task) -> tuple[str, dict[str, Any]]:
    """The generator name and entry from the task's verifier config, checked."""
    config = task.verifier_config
    name = config.get("dataset")
    entry = config.get("entry")
    where = f"task {task.id}: verifier_config"
    if not isinstance(name, str) or not name:
        raise DataError(f"{where}.dataset must name a reasoning-gym generator, got {name!r}")
    # Seconds to import: only when verifying. The package import comes first: it waits while
    # another verify thread is still initialising reasoning_gym, whereas importing only the
    # (already loaded) factory module would read its registry half filled.
    import reasoning_gym  # noqa: F401
    from reasoning_gym.factory import DATASETS

    if name not in DATASETS:
        raise DataError(f"{where}.dataset {name!r} is not a reasoning-gym generator")
    if not isinstance(entry, dict):
        raise DataError(f"{where}.entry must be the generator entry (a mapping), got {entry!r}")
    if not isinstance(entry.get("answer"), str):
        raise DataError(f"{where}.entry.answer must be a string, got {entry.get('answer')!r}")
    if not isinstance(entry.get("metadata", {}), dict):
        raise DataError(f"{where}.entry.metadata must be a mapping")
    return name, entry


@functools.cache
def generator(name: str) -> Any:
    """A generator instance for its ``score_answer`` (scoring reads only the entry, so the
    default config is enough). reasoning-gym is imported here: it takes seconds to load."""
    import reasoning_gym

    return reasoning_gym.create_dataset(name)


# ---------------------------------------------------------------------------------------------
# Per-generator inspection: diagnostics, and whether the scorer may see the answer.


@dataclass(frozen=True)
class Inspection:
    diagnostics: dict[str, Any]
    # False when the answer must not reach the generator's scorer (it is not what the scorer
    # can safely evaluate); the score is then 0.
    scorable: bool = True


def inspect_mini_sudoku(got: str, entry: dict[str, Any]) -> Inspection:
    metadata = entry["metadata"]
    puzzle: list[list[int]] = metadata["puzzle"]
    solution: list[list[int]] = metadata["solution"]
    size = len(solution)
    grid = read_grid(got, size)
    diagnostics: dict[str, Any] = {
        "malformed": not is_canonical_grid(got, size),
        "violations": [],
        "changed_givens": [],
        "empty_cells": [],
        "wrong_cells": [],
    }
    if grid is None:
        return Inspection(diagnostics)
    cells = [(r, c) for r in range(size) for c in range(size)]
    diagnostics["violations"] = grid_violations(grid)
    diagnostics["changed_givens"] = [
        [r, c] for r, c in cells if puzzle[r][c] and grid[r][c] != puzzle[r][c]
    ]
    diagnostics["empty_cells"] = [[r, c] for r, c in cells if not grid[r][c]]
    diagnostics["wrong_cells"] = [[r, c] for r, c in cells if grid[r][c] != solution[r][c]]
    return Inspection(diagnostics)


def is_canonical_grid(text: str, size: int) -> bool:
    """The generator's format: ``size`` lines of ``size`` digits separated by single spaces."""
    digits = "".join(str(d) for d in range(1, size + 1))
    row = rf"[{digits}](?: [{digits}]){{{size - 1}}}"
    return re.fullmatch(rf"{row}(?:\n{row}){{{size - 1}}}", text) is not None


def read_grid(text: str, size: int) -> list[list[int]] | None:
    """A lenient reading for diagnostics: any line with exactly ``size`` cells (digits or
    ``_``) is a row, whatever separates them; 0 marks an empty or out-of-range cell."""
    rows = []
    for line in text.splitlines():
        tokens = re.findall(r"\d|_", line)
        if len(tokens) == size:
            rows.append([int(t) if t.isdigit() and 1 <= int(t) <= size else 0 for t in tokens])
    return rows if len(rows) == size else None


def grid_violations(grid: list[list[int]]) -> list[dict[str, Any]]:
    size = len(grid)
    box = math.isqrt(size)
    units: list[tuple[str, int, list[int]]] = []
    units += [("row", r, grid[r]) for r in range(size)]
    units += [("column", c, [grid[r][c] for r in range(size)]) for c in range(size)]
    if box * box == size:
        for index in range(size):
            top, left = box * (index // box), box * (index % box)
            values = [grid[r][c] for r in range(top, top + box) for c in range(left, left + box)]
            units.append(("box", index, values))
    violations = []
    for unit, index, values in units:
        duplicates = sorted(v for v, n in Counter(v for v in values if v).items() if n > 1)
        if duplicates:
            violations.append({"unit": unit, "index": index, "duplicates": duplicates})
    return violations


def inspect_countdown(got: str, entry: dict[str, Any]) -> Inspection:
    metadata = entry["metadata"]
    numbers = [int(n) for n in metadata["numbers"]]
    evaluation = evaluate_countdown(got)
    used = Counter(evaluation.numbers)
    given = Counter(numbers)
    diagnostics = {
        "value": _json_number(evaluation.value),
        "target": metadata["target"],
        "numbers_not_allowed": sorted((used - given).elements()),
        "unused": sorted((given - used).elements()),
        "error": evaluation.error,
    }
    return Inspection(diagnostics, scorable=evaluation.error is None)


@dataclass(frozen=True)
class Evaluation:
    value: Fraction | None
    numbers: list[int]
    error: str | None


MAX_EXPRESSION_CHARS = 1000
# Python would also accept 0x10, 1_000 or 2.5; countdown's scorer would count their digits
# differently, so only the characters of integer arithmetic get as far as the parser.
_NOT_ARITHMETIC = re.compile(r"[^0-9\s+\-*/()]")


def evaluate_countdown(text: str) -> Evaluation:
    """Exact value of an expression of non-negative integers, + - * / and parentheses
    (:func:`rl2f.tasks.arithmetic.evaluate`, never ``eval``), with the numbers it uses.
    Anything else is an error, reported in words a teacher can pass on."""
    if not text.strip():
        return Evaluation(None, [], "empty answer")
    if len(text) > MAX_EXPRESSION_CHARS:
        return Evaluation(None, [], f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    if "=" in text:
        return Evaluation(None, _integers(text), "uses '=': give only the expression")
    if stray := sorted(set(_NOT_ARITHMETIC.findall(text))):
        return Evaluation(None, _integers(text), f"unsupported characters: {''.join(stray)!r}")
    try:
        tree = parse_python(text.strip(), mode="eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError) as exc:
        return Evaluation(None, _integers(text), f"not an arithmetic expression ({exc})")
    numbers: list[int] = []

    def count(node: ast.AST, value: Fraction, operands: tuple[Fraction, ...]) -> None:
        if isinstance(node, ast.Constant):
            numbers.append(node.value)

    try:
        value = evaluate(tree.body, visit=count)
    except ZeroDivisionError:
        return Evaluation(None, numbers, "division by zero")
    except (ValueError, RecursionError) as exc:
        return Evaluation(None, _integers(text), str(exc))
    return Evaluation(value, numbers, None)


def _integers(text: str) -> list[int]:
    """The integers as countdown's scorer counts them (whole-word digit runs)."""
    return [int(m) for m in re.findall(r"\b\d{1,100}\b", text)]


def _json_number(value: Fraction | None) -> int | float | None:
    if value is None:
        return None
    if value.denominator == 1:
        return int(value)
    try:
        return float(value)
    except OverflowError:
        return None


INSPECTORS: dict[str, Callable[[str, dict[str, Any]], Inspection]] = {
    "mini_sudoku": inspect_mini_sudoku,
    "countdown": inspect_countdown,
}


# ---------------------------------------------------------------------------------------------
# The verifier.


def tidy_lines(text: str) -> str:
    """Indentation and blank lines carry no meaning in a grid answer."""
    return "\n".join(line.strip() for line in text.splitlines() if line.strip())


@register("reasoning_gym")
class ReasoningGymVerifier:
    name = "reasoning_gym"

    def verify(self, task: Task, response: str) -> Verdict:
        name, entry = read_entry(task)
        expected = entry["answer"]
        multiline = "\n" in expected.strip()
        got = strict_single_answer(response, multiline=multiline)
        if got is not None and multiline:
            got = tidy_lines(got)

        scorer = generator(name).score_answer
        inspector = INSPECTORS.get(name)
        try:
            inspection = inspector(got or "", entry) if inspector else Inspection({})
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise DataError(
                f"task {task.id}: verifier_config.entry.metadata does not fit {name!r} ({exc!r})"
            ) from None

        value, scorer_error = 0.0, None
        if got is not None and inspection.scorable:
            try:
                value = float(scorer(got, entry))
            except Exception as exc:  # a third-party scorer meeting an odd answer must not
                scorer_error = f"{type(exc).__name__}: {exc}"[:500]  # end a training run
        diagnostics = {"expected": expected, "got": got, "score": value, **inspection.diagnostics}
        if scorer_error is not None:
            diagnostics["scorer_error"] = scorer_error
        return Verdict(correct=value == 1.0, extracted=got, diagnostics=diagnostics)
