"""Find the final answer in a model's reply.

Order of precedence, latest mark wins within each kind:

1. the last ``\\boxed{...}`` (braces balanced, nesting allowed);
2. the last ``Answer:`` / ``Final answer:`` marker (case-insensitive, markdown bold allowed);
3. the last fenced code block (```...```);
4. a fallback chosen by the caller: the whole reply, its last non-empty line, or nothing.

The span is always what the student marked, never a number fished out of prose: exact
verifiers must not reward an answer that is merely mentioned somewhere in a longer reply.
"""

from __future__ import annotations

import re
from enum import Enum

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_ANSWER_MARKER = re.compile(
    r"(?<![a-z])(?:final\s+)?answer\s*(?:\*\*|__)?\s*[:：][ \t]*", re.IGNORECASE
)
_FENCE = re.compile(r"```[^\n`]*\n(.*?)```", re.DOTALL)
# Wrappers a model puts around an answer that carry no meaning: math delimiters, markdown bold.
_WRAPPERS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"), ("**", "**"), ("`", "`"))


class Fallback(Enum):
    """What counts as the answer when the student marked none."""

    WHOLE = "whole"  # the whole reply: right for bare replies such as a grid or a move list
    LAST_LINE = "last_line"  # the last non-empty line: the usual end of worked solutions
    NONE = "none"  # an unmarked reply has no answer


def clean_answer(span: str) -> str | None:
    """Strip what surrounds an answer without changing it: whitespace, trailing periods,
    ``$...$`` and similar wrappers. Repeats until stable (``$12$.`` -> ``12``)."""
    previous = None
    text = span
    while text != previous:
        previous = text
        text = text.strip()
        while text.endswith(".") and not text.endswith(".."):
            text = text[:-1].rstrip()
        for opening, closing in _WRAPPERS:
            if len(text) < len(opening) + len(closing):
                continue
            if text.startswith(opening) and text.endswith(closing):
                inner = text[len(opening) : -len(closing)]
                # "$1$ and $2$" is two formulas, not one wrapped answer.
                if closing not in inner:
                    text = inner
                    break
        for bold in ("**", "__"):
            # The other half of "**Answer:** 12" was consumed with the marker.
            if text.startswith(bold) and bold not in text[len(bold) :]:
                text = text[len(bold) :]
            if text.endswith(bold) and bold not in text[: -len(bold)]:
                text = text[: -len(bold)]
    return text or None


def last_boxed(text: str) -> str | None:
    """Content of the last top-level ``\\boxed{}``. An unclosed last box (a reply cut off
    mid-answer) gives None rather than an earlier, superseded answer."""
    found: str | None = None
    position = 0
    while match := _BOXED.search(text, position):
        end = _matching_brace(text, match.end() - 1)
        if end is None:
            return None
        found = text[match.end() : end]
        position = end + 1
    # ``\boxed{\boxed{12}}`` is still 12.
    while found is not None and (inner := _BOXED.match(found.strip())):
        stripped = found.strip()
        if _matching_brace(stripped, inner.end() - 1) != len(stripped) - 1:
            break
        found = stripped[inner.end() : -1]
    return found


def _matching_brace(text: str, open_index: int) -> int | None:
    """Index of the brace closing the one at ``open_index``; escaped braces (``\\{``) do not
    count, so ``\\boxed{\\{1, 2\\}}`` keeps the set."""
    depth = 0
    index = open_index
    while index < len(text):
        char = text[index]
        if char == "\\":
            index += 2
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return index
        index += 1
    return None


def after_answer_marker(text: str, multiline: bool = False) -> str | None:
    """The text after the last ``Answer:`` marker: the rest of that line, or (when the line
    is empty there) the next non-empty line. With ``multiline`` the span runs on to the next
    blank line, which is how a grid answer is written. None: no marker; "": a marker with
    nothing after it."""
    matches = list(_ANSWER_MARKER.finditer(text))
    if not matches:
        return None
    lines = text[matches[-1].end() :].split("\n")
    first, rest = lines[0], lines[1:]
    if not first.strip():
        while rest and not rest[0].strip():
            rest = rest[1:]
        if not rest:
            return ""
        first, rest = rest[0], rest[1:]
    if not multiline:
        return first
    block = [first]
    for line in rest:
        if not line.strip():
            break
        block.append(line)
    return "\n".join(block)


def last_fenced_block(text: str) -> str | None:
    blocks = _FENCE.findall(text)
    return blocks[-1] if blocks else None


def extract_answer(
    text: str | None, fallback: Fallback = Fallback.LAST_LINE, multiline: bool = False
) -> str | None:
    """The student's final answer, cleaned; None when the reply holds nothing usable.

    ``multiline`` lets a marked answer span several lines (grids); single-line answers stop
    at the end of the marker's line so that prose after them is not part of the answer.
    """
    if not text or not text.strip():
        return None
    if _BOXED.search(text):
        # A box is the strongest mark; a broken one is a malformed answer, not a cue to look
        # for weaker marks.
        boxed = last_boxed(text)
        return clean_answer(boxed) if boxed is not None else None
    for span in (after_answer_marker(text, multiline), last_fenced_block(text)):
        if span is not None:
            return clean_answer(span)
    if fallback is Fallback.WHOLE:
        return clean_answer(text)
    if fallback is Fallback.LAST_LINE:
        lines = [line for line in text.splitlines() if line.strip()]
        return clean_answer(lines[-1]) if lines else None
    return None


def strict_single_answer(text: str | None, multiline: bool = False) -> str | None:
    """The answer for exact scorers (reasoning-gym): the marked span, or the whole reply when
    nothing is marked. Never a substring guessed out of prose, so a right answer buried in a
    longer reply is scored as the longer reply and fails an exact comparison."""
    return extract_answer(text, fallback=Fallback.WHOLE, multiline=multiline)
