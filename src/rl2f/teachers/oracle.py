"""The oracle teacher: rule-based critiques written from the verifier's diagnostics.

It is privileged (it reads the diagnostics, which hold the expected answer) and cheap, so it is
what the tiny default model trains with. Three levels of informativeness, for ablations:

- ``binary``: only that the answer is wrong;
- ``directional``: which way it is wrong (too high or too low, which row breaks a rule, the path
  hits a wall, what kind of failure the code has);
- ``diagnostic``: what exactly is wrong (how far off, which digits, which cells, the first
  invalid move, a failing test with expected and actual output).

Two rules keep the critiques from giving the answer away. They never state the answer or a
value equal to it (the leak guard checks that too). And a hint is never so precise that,
together with the student's own attempt, it pins the answer down: "too high by a single-digit
amount" is given, "off by 3" is not (attempt - 3 is the answer), and sign and digit hints are
given only when every critique the student could receive leaves at least
:data:`MIN_CONSISTENT_ANSWERS` possible answers (see :func:`integer_hints`).

Critiques are short and regular (the tiny model must learn to read them), with a few phrasings
per message chosen deterministically from the task id, turn and regeneration attempt, so a
critique is reproducible and a regenerated one reads differently.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from typing import Any, Literal, get_args

from rl2f.leakage import normalize_text
from rl2f.tasks.arithmetic import arithmetic_value
from rl2f.tasks.schema import Task
from rl2f.teachers.base import CritiqueRequest

Level = Literal["binary", "directional", "diagnostic"]
LEVELS: tuple[str, ...] = get_args(Level)

# Fewer candidates than this and a hint, read with the attempt, all but names the answer.
MIN_CONSISTENT_ANSWERS = 3
# Digit hints name positions up to the thousands (DIGIT_NAMES); longer numbers get none.
MAX_DIGITS_FOR_DIGIT_HINT = 4
MAX_QUOTED_CHARS = 160  # test calls and outputs quoted from code diagnostics
MAX_LISTED_CELLS = 4

# Answers of some tasks are single common words (a one-move maze path is "up" or "right"), and the
# leak guard flags any occurrence of the answer: so no phrasing uses a direction word or
# "infeasible" (tests check this).
PHRASES: dict[str, tuple[str, ...]] = {
    # every domain
    "incorrect": (
        "Your answer is incorrect.",
        "That answer is not correct.",
        "This answer is wrong.",
    ),
    "try_again": ("Try again.", "Check your work and try again.", "Have another go."),
    "partly_right": ("Part of your answer is correct.", "Your answer is partly correct."),
    # numbers
    "format_number": (
        "I could not find your final answer. Give it after 'Answer:'.",
        "Your final answer is missing. Write it after 'Answer:'.",
    ),
    "not_a_number": (
        "Your final answer is not a number. Give a plain number after 'Answer:'.",
        "I need a number as your final answer. Write it after 'Answer:'.",
    ),
    "format_timeout": (
        "Your final answer could not be checked. Give a plain number after 'Answer:'.",
        "I could not read your answer as a number. Write a plain number after 'Answer:'.",
    ),
    "too_high": (
        "Your answer is too high.",
        "Your answer is larger than the correct value.",
        "The correct value is smaller than your answer.",
    ),
    "too_low": (
        "Your answer is too low.",
        "Your answer is smaller than the correct value.",
        "The correct value is larger than your answer.",
    ),
    "not_equal": ("Your value is not equal to the correct one.",),
    "band": ("It is off by {band}.", "The error is {band}."),
    "wrong_sign": ("Check the sign of your result.", "The sign of your result is wrong."),
    "wrong_digits": (
        "Your {positions} {digit_word} wrong; the other digits are correct.",
        "Only your {positions} {digit_word} wrong.",
    ),
    # mini sudoku
    "format_grid": (
        "Write the grid as in the puzzle: one row per line, numbers separated by single spaces.",
        "Use the puzzle's format: one row per line, numbers separated by single spaces.",
    ),
    "unit_breaks_rule": ("{unit} breaks a rule.", "Check {unit_lower}: it breaks a rule."),
    "unit_repeats": ("{unit} repeats {digits}.", "{unit} has {digits} more than once."),
    "changed_given": (
        "You changed a number that was given in the puzzle.",
        "A given number of the puzzle was changed.",
    ),
    "changed_given_cells": (
        "You changed given numbers at {cells}.",
        "The puzzle's given numbers at {cells} were changed.",
    ),
    "empty_cells": ("Some cells are still empty.", "Not every cell is filled in."),
    "empty_cells_at": ("Empty cells: {cells}.", "These cells are still empty: {cells}."),
    "wrong_cells_at": ("Wrong cells: {cells}.", "These cells are wrong: {cells}."),
    "grid_wrong": ("Your grid is not the solution.", "The grid is not solved correctly."),
    # countdown
    "format_expression": (
        "Give one arithmetic expression with the given numbers, no '=' and no other text.",
        "Your answer must be a single arithmetic expression of the given numbers, without '='.",
    ),
    "expression_error": ("Your expression cannot be evaluated: {error}.", "Problem: {error}."),
    "numbers_not_allowed": (
        "You used a number that is not available, or used one too often.",
        "Use only the given numbers, each at most once.",
    ),
    "numbers_not_allowed_list": (
        "You used {numbers}, which you may not use (or not that often).",
        "These numbers are not available to you: {numbers}.",
    ),
    "unused": ("You did not use all the numbers.", "Some of the numbers are unused."),
    "unused_list": ("You did not use {numbers}.", "Unused numbers: {numbers}."),
    "value_above": ("Your expression's value is above the target.",),
    "value_below": ("Your expression's value is below the target.",),
    "value_is": (
        "Your expression evaluates to {value}, not {target}.",
        "Your expression gives {value}; the target is {target}.",
    ),
    # maze
    "format_moves": (
        "Answer with a sequence of moves separated by spaces, using only the direction words "
        "from the problem.",
        "Your moves could not be read. Use only the direction words from the problem, "
        "separated by spaces.",
    ),
    "hits_wall": ("Your path runs into a blocked cell.", "Your path goes through a wall."),
    "leaves_grid": ("Your path leaves the grid.", "Your path steps outside the grid."),
    "move_hits_wall": (
        "Move {index} runs into a blocked cell.",
        "Your move number {index} goes into a wall.",
    ),
    "move_leaves_grid": (
        "Move {index} leaves the grid.",
        "Your move number {index} steps outside the grid.",
    ),
    "misses_goal": (
        "Your path does not end at the destination.",
        "Your path stops before the destination.",
    ),
    "stops_at": ("It ends at row {row}, column {col}.", "You stop at row {row}, column {col}."),
    "not_shortest": (
        "Your path reaches the destination but is not the shortest.",
        "There is a shorter path to the destination.",
    ),
    "lengths": (
        "Yours takes {got} moves; the shortest takes {best}.",
        "The shortest path has {best} moves, yours has {got}.",
    ),
    "path_exists": (
        "There is a path from the start to the destination.",
        "The destination can be reached; find a path.",
    ),
    # code
    "format_code": (
        "I could not find your code. Reply with the whole function in a ```python block.",
        "Put the complete function in a ```python code block.",
    ),
    "missing_function": (
        "Your code does not define the function {name}.",
        "Define the function {name} in your code.",
    ),
    "syntax_error": ("Your code has a syntax error.", "Your code does not parse."),
    "runtime_error": ("Your code raises an error.", "Your code crashes when it runs."),
    "timeout": (
        "Your code takes too long; it may loop forever.",
        "Your code did not finish in time.",
    ),
    "memory": ("Your code uses too much memory.", "Your code runs out of memory."),
    "wrong_output": (
        "Your function returns wrong results.",
        "Your function gives the wrong output on some tests.",
    ),
    "failed_count": ("{failed} of {total} tests fail.", "It fails {failed} of {total} tests."),
    "error_detail": ("The error: {error}", "It fails with: {error}"),
    "failing_test": (
        "For {call} it should return {expected} but returned {actual}.",
        "{call} should give {expected}, yours gives {actual}.",
    ),
    "failing_test_error": ("{call} raises {error}", "Calling {call} fails with {error}"),
    "failing_assert": ("This test fails: {source}", "A failing test: {source}"),
}

# Sizes are said in digits counted, not as numbers: the leak guard reads "less than ten" as
# 10, so for an answer of 10 every such band would be rejected as a leak, and a phrasing chosen
# by the answer would itself give the answer away.
BANDS: tuple[tuple[int, int | None, str], ...] = (
    (1, 10, "a single-digit amount"),
    (10, 100, "a two-digit amount"),
    (100, 1000, "a three-digit amount"),
    (1000, None, "a four-digit amount or more"),
)
RELATIVE_BANDS: tuple[tuple[float, str], ...] = (
    (0.01, "less than one percent"),
    (0.1, "less than a tenth of the correct value"),
    (0.5, "less than half of the correct value"),
)
DIGIT_NAMES = ("units", "tens", "hundreds", "thousands")


@dataclass(frozen=True)
class Voice:
    """Picks one phrasing per message, the same every time for the same (task, turn, attempt):
    critiques are reproducible, and a regeneration after a leak reads differently."""

    seed: str

    def say(self, key: str, **fields: Any) -> str:
        options = PHRASES[key]
        digest = hashlib.sha256(f"{self.seed}\x1f{key}".encode()).digest()
        return options[int.from_bytes(digest[:4], "big") % len(options)].format(**fields)


@dataclass(frozen=True)
class Failure:
    """One wrong attempt as a critic sees it."""

    task: Task
    attempt: str
    diagnostics: dict[str, Any]

    @classmethod
    def of(cls, request: CritiqueRequest) -> Failure:
        return cls(request.task, request.attempt, dict(request.verdict.diagnostics))


Critic = Callable[[Failure, Level, Voice], list[str]]


class OracleTeacher:
    """Rule-based privileged teacher; see the module docstring."""

    name = "oracle"
    privileged = True

    def __init__(self, level: Level = "diagnostic") -> None:
        if level not in LEVELS:
            raise ValueError(f"teacher.level must be one of {LEVELS}, got {level!r}")
        self.level: Level = level

    def critique(self, requests: list[CritiqueRequest]) -> list[str]:
        return [self.critique_one(request) for request in requests]

    def close(self) -> None:
        """Nothing to release: the oracle's critiques are rules, it holds no engine."""

    def engine_stats(self) -> dict[str, int]:
        return {}

    def critique_one(self, request: CritiqueRequest) -> str:
        task = request.task
        voice = Voice(f"{task.id}\x1f{request.turn}\x1f{request.attempt_number}")
        if self.level == "binary":
            return voice.say("incorrect")
        critic = _critic_for(task)
        sentences = critic(Failure.of(request), self.level, voice)
        return " ".join(sentences) if sentences else voice.say("incorrect")


def _critic_for(task: Task) -> Critic:
    if task.verifier == "math":
        return math_critique
    if task.verifier == "maze":
        return maze_critique
    if task.verifier == "code":
        return code_critique
    dataset = str(task.verifier_config.get("dataset") or task.source.rpartition(":")[2])
    return {"mini_sudoku": sudoku_critique, "countdown": countdown_critique}.get(
        dataset, generic_critique
    )


# ------------------------------------------------------------------ numbers
def exact_value(text: Any) -> Fraction | None:
    if text is None or isinstance(text, bool):
        return None
    if isinstance(text, int | float):
        return Fraction(str(text))
    return arithmetic_value(normalize_text(str(text)).replace("$", ""))


def math_critique(failure: Failure, level: Level, voice: Voice) -> list[str]:
    diag = failure.diagnostics
    got = diag.get("got")
    if diag.get("timeout"):
        return [voice.say("format_timeout")]
    if diag.get("parse_error") or got in (None, ""):
        return [voice.say("format_number")]
    if exact_value(got) is None and exact_value(diag.get("expected")) is not None:
        # Prose or a formula where a number was asked for: say what form the answer takes.
        return [voice.say("not_a_number")]
    return number_critique(got, diag.get("expected"), diag.get("numeric_error"), level, voice)


def number_critique(
    got_text: Any, expected_text: Any, numeric_error: Any, level: Level, voice: Voice
) -> list[str]:
    """Direction, then (diagnostic) how far off and which digits, never narrowing the answer to
    fewer than MIN_CONSISTENT_ANSWERS candidates."""
    got, expected = exact_value(got_text), exact_value(expected_text)
    if got is not None and expected is not None:
        error: Fraction | None = got - expected
    elif isinstance(numeric_error, int | float) and not isinstance(numeric_error, bool):
        error = Fraction(str(numeric_error))
    else:
        error = None
    if not error:  # unknown, or equal in value but rejected (a format the verifier refused)
        return [voice.say("incorrect"), voice.say("try_again")]

    sentences = [voice.say("too_high" if error > 0 else "too_low")]
    if level != "diagnostic":
        return sentences
    if got is not None and expected is not None and got.denominator == expected.denominator == 1:
        sentences += integer_hints(int(got), int(expected), voice)
    elif expected:
        relative = abs(error / expected)
        for limit, words in RELATIVE_BANDS:
            if relative < limit:
                sentences.append(voice.say("band", band=words))
                break
    return sentences


def integer_hints(got: int, expected: int, voice: Voice) -> list[str]:
    """Size of the error, then sign and digit hints while they stay safe.

    What a critique reveals is the set of answers that would have produced the same text (the
    student knows their own number). Direction and band leave at least nine. A further hint
    splits that set into parts (a part per sentence, and one for "said nothing", since silence
    is informative too); it is used only if every part keeps MIN_CONSISTENT_ANSWERS answers.
    That test looks at all parts, not just the true answer's, so whether a hint is given
    depends only on what the student already knows and leaks nothing by itself.
    """
    error = got - expected
    low, high, words = next(
        band
        for band in BANDS
        if band[0] <= abs(error) and (band[1] is None or abs(error) < band[1])
    )
    hints = [voice.say("band", band=words)]
    if high is None:  # unboundedly many answers remain; nothing to enumerate
        return hints
    direction = 1 if error > 0 else -1
    return hints + list(_finer_hints(got, direction, low, high, voice)[expected])


@lru_cache(maxsize=1024)
def _finer_hints(
    got: int, direction: int, low: int, high: int, voice: Voice
) -> dict[int, tuple[str, ...]]:
    """The extra hints for every answer the band leaves, computed once per (attempt, band):
    the decision to give a hint looks at all of them anyway."""
    candidates = [got - direction * step for step in range(low, high)]

    def sign_hint(value: int) -> str | None:
        flipped = got != 0 and value != 0 and (got > 0) != (value > 0)
        return voice.say("wrong_sign") if flipped else None

    def digit_hint(value: int) -> str | None:
        wrong = wrong_digit_positions(got, value)
        if not wrong or len(wrong) == len(str(abs(got))):  # all digits wrong says nothing new
            return None
        names = " and ".join(DIGIT_NAMES[position] for position in wrong)
        digit_word = "digit is" if len(wrong) == 1 else "digits are"
        return voice.say("wrong_digits", positions=names, digit_word=digit_word)

    said: dict[int, tuple[str, ...]] = {value: () for value in candidates}
    groups = [candidates]
    for hint in (sign_hint, digit_hint):
        refined = []
        for group in groups:
            parts: dict[str | None, list[int]] = defaultdict(list)
            for value in group:
                parts[hint(value)].append(value)
            sizes_ok = all(len(part) >= MIN_CONSISTENT_ANSWERS for part in parts.values())
            if len(parts) < 2 or not sizes_ok:
                refined.append(group)
                continue
            for sentence, part in parts.items():
                refined.append(part)
                if sentence is not None:
                    for value in part:
                        said[value] += (sentence,)
        groups = refined
    return said


def wrong_digit_positions(got: int, expected: int) -> tuple[int, ...] | None:
    """Positions (0 = units) where the digits differ, for two numbers with the same sign and
    number of digits; None when they are not comparable digit by digit."""
    a, b = str(abs(got)), str(abs(expected))
    if (got < 0) != (expected < 0) or len(a) != len(b) or len(a) > MAX_DIGITS_FOR_DIGIT_HINT:
        return None
    return tuple(i for i, (x, y) in enumerate(zip(reversed(a), reversed(b), strict=True)) if x != y)


# ------------------------------------------------------------------ puzzles
BOX_NAMES_2X2 = (
    "The top-left box",
    "The top-right box",
    "The bottom-left box",
    "The bottom-right box",
)


def _cell_list(cells: Sequence[Sequence[int]]) -> str:
    shown = [f"(row {int(r) + 1}, column {int(c) + 1})" for r, c in list(cells)[:MAX_LISTED_CELLS]]
    more = len(cells) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def unit_name(violation: dict[str, Any], size: int) -> str:
    """The unit as people name it, counting from one: "Row 2", "Column 3", "The top-left box"."""
    unit, index = str(violation.get("unit")), int(violation.get("index", 0))
    if unit == "box":
        if size == 4:
            return BOX_NAMES_2X2[index]
        return f"Box {index + 1} (counting left to right, top to bottom)"
    return f"{unit.capitalize()} {index + 1}"


def _digits(values: Sequence[Any]) -> str:
    names = [str(value) for value in values]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def sudoku_critique(failure: Failure, level: Level, voice: Voice) -> list[str]:
    diag = failure.diagnostics
    violations = [v for v in diag.get("violations") or [] if isinstance(v, dict)]
    changed = list(diag.get("changed_givens") or [])
    empty = list(diag.get("empty_cells") or [])
    wrong = list(diag.get("wrong_cells") or [])
    size = len(failure.task.answer.strip().splitlines()) or 4
    sentences: list[str] = []
    if diag.get("malformed") or diag.get("got") in (None, ""):
        sentences.append(voice.say("format_grid"))
    if level == "directional":
        if changed:  # the more basic mistake: the givens are part of the problem
            sentences.append(voice.say("changed_given"))
        elif violations:
            unit = unit_name(violations[0], size)
            sentences.append(voice.say("unit_breaks_rule", unit=unit, unit_lower=_lower(unit)))
        elif empty:
            sentences.append(voice.say("empty_cells"))
        return sentences or [voice.say("grid_wrong")]
    for violation in violations:
        digits = _digits(violation.get("duplicates") or ["a number"])
        sentences.append(voice.say("unit_repeats", unit=unit_name(violation, size), digits=digits))
    if changed:
        sentences.append(voice.say("changed_given_cells", cells=_cell_list(changed)))
    if empty:
        sentences.append(voice.say("empty_cells_at", cells=_cell_list(empty)))
    elif wrong:
        sentences.append(voice.say("wrong_cells_at", cells=_cell_list(wrong)))
    return sentences or [voice.say("grid_wrong")]


def _lower(name: str) -> str:
    return name[:1].lower() + name[1:]


def _number_list(numbers: Any) -> str:
    return ", ".join(str(number) for number in numbers)


def countdown_critique(failure: Failure, level: Level, voice: Voice) -> list[str]:
    diag = failure.diagnostics
    value, target = exact_value(diag.get("value")), exact_value(diag.get("target"))
    if diag.get("got") in (None, "") or value is None:
        sentences = [voice.say("format_expression")]
        error = diag.get("error")
        if level == "diagnostic" and error:
            sentences.append(voice.say("expression_error", error=_quote(error).rstrip(".")))
        return sentences
    not_allowed = list(diag.get("numbers_not_allowed") or [])
    unused = list(diag.get("unused") or [])
    sentences: list[str] = []
    if level == "directional":
        if not_allowed:
            sentences.append(voice.say("numbers_not_allowed"))
        if target is not None and value != target:
            sentences.append(voice.say("value_above" if value > target else "value_below"))
        if unused and not sentences:
            sentences.append(voice.say("unused"))
        return sentences or [voice.say("incorrect")]
    if target is not None and value != target:
        sentences.append(voice.say("value_is", value=_plain(value), target=_plain(target)))
    if not_allowed:
        sentences.append(voice.say("numbers_not_allowed_list", numbers=_number_list(not_allowed)))
    if unused:
        sentences.append(voice.say("unused_list", numbers=_number_list(unused)))
    return sentences or [voice.say("incorrect")]


def _plain(value: Fraction) -> str:
    if value.denominator == 1:
        return str(value.numerator)
    return f"{float(value):.4g}"


def generic_critique(failure: Failure, level: Level, voice: Voice) -> list[str]:
    """Any other reasoning-gym generator: all we know is expected, got and the scorer's score.
    Numeric answers still get direction and size; others get partial credit at most."""
    diag = failure.diagnostics
    if diag.get("got") in (None, ""):
        return [voice.say("format_number")]
    if exact_value(diag.get("expected")) is not None and exact_value(diag.get("got")) is not None:
        return number_critique(diag.get("got"), diag.get("expected"), None, level, voice)
    score = diag.get("score")
    if isinstance(score, int | float) and 0 < score < 1:
        return [voice.say("partly_right"), voice.say("try_again")]
    return [voice.say("incorrect"), voice.say("try_again")]


# ------------------------------------------------------------------ maze
def maze_critique(failure: Failure, level: Level, voice: Voice) -> list[str]:
    """Never says whether a path exists when none does: "infeasible" is then the answer."""
    diag = failure.diagnostics
    reason = diag.get("invalid_reason")
    index = diag.get("first_invalid_move")
    if reason == "unknown_move" or diag.get("got") in (None, ""):
        return [voice.say("format_moves")]
    if diag.get("claimed_infeasible"):
        if diag.get("feasible") is False:  # cannot happen for a wrong answer; say nothing more
            return [voice.say("incorrect")]
        return [voice.say("path_exists")]
    if reason in ("blocked", "out_of_bounds"):
        wall = reason == "blocked"
        if level == "directional" or index is None:
            return [voice.say("hits_wall" if wall else "leaves_grid")]
        return [voice.say("move_hits_wall" if wall else "move_leaves_grid", index=int(index) + 1)]
    if diag.get("reached_goal"):
        sentences = [voice.say("not_shortest")]
        moves, best = diag.get("got_moves"), diag.get("expected_length")
        if level == "diagnostic" and isinstance(moves, list) and isinstance(best, int):
            sentences.append(voice.say("lengths", got=len(moves), best=best))
        return sentences
    sentences = [voice.say("misses_goal")]
    position = diag.get("final_position")
    if level == "diagnostic" and isinstance(position, list | tuple) and len(position) == 2:
        sentences.append(voice.say("stops_at", row=int(position[0]) + 1, col=int(position[1]) + 1))
    return sentences


# ------------------------------------------------------------------ code
def _quote(value: Any) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= MAX_QUOTED_CHARS else text[: MAX_QUOTED_CHARS - 3] + "..."


def code_critique(failure: Failure, level: Level, voice: Voice) -> list[str]:
    """The kind of failure (directional), then one failing test's call with expected and actual
    output or the error (diagnostic). Tests and their expected values may be shown; the
    reference solution never is."""
    diag = failure.diagnostics
    status, error = str(diag.get("status") or ""), str(diag.get("error") or "")
    entry_point = str(failure.task.verifier_config.get("entry_point") or "")
    wrote_code = "```" in failure.attempt or re.search(r"^\s*def\s", failure.attempt, re.M)
    if not wrote_code:
        return [voice.say("format_code")]
    if status in ("timeout", "memory"):
        return [voice.say(status)]
    if "does not define a function named" in error:
        return [voice.say("missing_function", name=entry_point)]
    if error.startswith(("SyntaxError", "IndentationError", "TabError")):
        return _with_detail([voice.say("syntax_error")], error, level, voice)
    if error:  # the program failed while loading, or the process died
        return _with_detail([voice.say("runtime_error")], error, level, voice)

    tests = [test for test in diag.get("tests") or [] if isinstance(test, dict)]
    failing = next((test for test in tests if not test.get("passed")), None)
    crashed = failing is not None and bool(failing.get("error"))
    sentences = [voice.say("runtime_error" if crashed else "wrong_output")]
    total, failed = diag.get("total"), diag.get("failed")
    if isinstance(total, int) and isinstance(failed, int) and total > 0 and failed > 0:
        sentences.append(voice.say("failed_count", failed=failed, total=total))
    if level != "diagnostic" or failing is None:
        return sentences
    call = failing.get("call")
    if call:  # tests call the function through check()'s parameter; name it as the student did
        call = re.sub(r"^\s*[A-Za-z_]\w*\s*\(", f"{entry_point}(", str(call), count=1)
    if call and crashed:
        sentences.append(
            voice.say("failing_test_error", call=_quote(call), error=_quote(failing["error"]))
        )
    elif call and failing.get("expected") is not None:
        sentences.append(
            voice.say(
                "failing_test",
                call=_quote(call),
                expected=_quote(failing["expected"]),
                actual=_quote(failing.get("actual")),
            )
        )
    elif failing.get("source"):
        source = re.sub(r"\bcandidate\b", entry_point, str(failing["source"]))
        sentences.append(voice.say("failing_assert", source=_quote(source)))
    return sentences


def _with_detail(sentences: list[str], error: str, level: Level, voice: Voice) -> list[str]:
    if level == "diagnostic" and error:
        sentences.append(voice.say("error_detail", error=_quote(error)))
    return sentences


__all__ = [
    "LEVELS",
    "MIN_CONSISTENT_ANSWERS",
    "OracleTeacher",
    "PHRASES",
    "Voice",
    "code_critique",
    "countdown_critique",
    "generic_critique",
    "Failure",
    "math_critique",
    "maze_critique",
    "number_critique",
    "sudoku_critique",
]
