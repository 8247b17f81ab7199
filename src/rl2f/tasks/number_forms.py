"""Numbers as prose writes them, rewritten as digits and operators so exact arithmetic can read
them: "minus twelve" -> "-12", "seven plus five" -> "7 + 5", "the sum of 10 and 2" -> "(10 + 2)",
"1 2" -> "12", "1.2e1" -> "(1.2*10^1)", "XII" -> "12".

The leak guard compares every number it finds with the privileged answer; a student reads
"twelve" as easily as "12", so the guard reads this rewriting too. Number words are parsed by
``text2num`` and Roman numerals by ``roman`` (both maintained parsers); the rest are a few
patterns, since no library turns arithmetic written in words into an expression.

Deliberate limits, to keep ordinary prose from reading as numbers: "one", "two" and "three"
standing alone stay words (text2num's default threshold: "one step", "two digits"), single-letter
Roman numerals stay letters ("X", "V" are names and variables far more often) and the pronoun "I"
is never a one.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from fractions import Fraction

import roman
from text_to_num import alpha2digit

_NUM = r"-?\d+(?:\.\d+)?"

# Roman numerals: upper case of two letters or more, or lower case of three or more that is not
# an English word ("mix" is a valid numeral).
_ROMAN = re.compile(r"\b(?:[MDCLXVI]{2,}|[mdclxvi]{3,})\b")
_ROMAN_WORDS = frozenset({"mix"})

# A sign word right before a number, not between two numbers ("minus 12", "negative 12").
_SIGN = re.compile(r"\b(?:minus|negative)\s+(?=\d)", re.I)
_OPERATOR_WORDS = (
    (r"plus|added to|and then add", "+"),
    (r"minus|less|take away", "-"),
    (r"times|multiplied by", "*"),
    (r"divided by", "/"),
    (r"to the power of|raised to(?: the power of)?", "^"),
)
_OPERATORS = [
    (re.compile(rf"(?<=\d)\s+(?:{words})\s+(?=[-(]?\d)", re.I), f" {symbol} ")
    for words, symbol in _OPERATOR_WORDS
]


# "one", "two" and "three" are read as numbers only next to an operator word ("three times four"),
# where they cannot be ordinary prose.
_SMALL = {"zero": "0", "one": "1", "two": "2", "three": "3"}
_OPERATOR_WORD = "|".join(words for words, _ in _OPERATOR_WORDS)
_SMALL_WORD = r"(zero|one|two|three)"
_SMALL_BEFORE_OPERATOR = re.compile(rf"\b{_SMALL_WORD}(?=\s+(?:{_OPERATOR_WORD})\b)", re.I)
_SMALL_AFTER_OPERATOR = re.compile(
    rf"\b((?:plus|minus|times|multiplied by|divided by|(?:sum|total|product|quotient) of"
    rf"|difference (?:of|between))\s+){_SMALL_WORD}\b",
    re.I,
)


_SMALL_SECOND_OPERAND = re.compile(
    rf"\b((?:sum|total|product|quotient|difference)\s+(?:of|between)\s+\S+\s+and\s+)"
    rf"{_SMALL_WORD}\b",
    re.I,
)


def _small_numbers(text: str) -> str:
    text = _SMALL_BEFORE_OPERATOR.sub(lambda m: _SMALL[m.group(1).lower()], text)
    for pattern in (_SMALL_AFTER_OPERATOR, _SMALL_SECOND_OPERAND):
        text = pattern.sub(lambda m: m.group(1) + _SMALL[m.group(2).lower()], text)
    return text


def _pair(op: str) -> Callable[[re.Match[str]], str]:
    return lambda m: f"({m.group(1)} {op} {m.group(2)})"


def _difference(match: re.Match[str]) -> str:
    """The difference between 2 and 14 is 12 either way round."""
    a, b = (Fraction(match.group(i)) for i in (1, 2))
    big, small = (match.group(1), match.group(2)) if a >= b else (match.group(2), match.group(1))
    return f"({big} - {small})"


_PHRASES: list[tuple[re.Pattern[str], Callable[[re.Match[str]], str]]] = [
    (re.compile(rf"\b(?:sum|total)\s+of\s+({_NUM})\s+and\s+({_NUM})", re.I), _pair("+")),
    (re.compile(rf"\bproduct\s+of\s+({_NUM})\s+and\s+({_NUM})", re.I), _pair("*")),
    (re.compile(rf"\bquotient\s+of\s+({_NUM})\s+(?:and|by)\s+({_NUM})", re.I), _pair("/")),
    (
        re.compile(rf"\bdifference\s+(?:of|between)\s+({_NUM})\s+and\s+({_NUM})", re.I),
        _difference,
    ),
    (re.compile(rf"\bhalf\s+of\s+({_NUM})", re.I), lambda m: f"({m.group(1)} / 2)"),
    (re.compile(rf"\b(?:twice|double)\s+({_NUM})", re.I), lambda m: f"(2 * {m.group(1)})"),
    (re.compile(rf"\btriple\s+({_NUM})", re.I), lambda m: f"(3 * {m.group(1)})"),
    (re.compile(rf"({_NUM})\s+and\s+a\s+half\b", re.I), lambda m: f"({m.group(1)} + 1/2)"),
]

# Where a number ends: not inside a word or a decimal, but a full stop may follow.
_END = r"(?!\w|\.\d)"
# 1.2e1, 1.2E+1, 1.2 x 10^1 (the multiplication sign is normalised by the guard beforehand).
_SCIENTIFIC = re.compile(rf"(?<![\w.])(-?\d+(?:\.\d+)?)[eE]([-+]?\d+){_END}")
_TIMES_TEN = re.compile(r"(?<=\d)\s*[xX]\s*(?=10\s*(?:\^|\*\*))")
# Digits spelt out one by one ("1 2", "1_2") or grouped by spaces ("12 000"): one number.
_SPACED_DIGITS = re.compile(rf"(?<![\w.])\d(?:[ _']\d)+{_END}")
_GROUPED_DIGITS = re.compile(rf"(?<![\w.])\d{{1,3}}(?:[ _']\d{{3}})+{_END}")


# Plural place names are positions or vague amounts, not values ("your tens digit", "thousands of
# ways"); text2num would read "tens and hundreds" as 1000.
_PLURAL_PLACES = re.compile(r"\b(?:tens|hundreds|thousands|millions|billions|dozens)\b", re.I)


def _number_words(text: str) -> str:
    """text2num's reading of number words, applied between plural place names only."""
    pieces = _PLURAL_PLACES.split(text)
    places = _PLURAL_PLACES.findall(text)
    out = [alpha2digit(_small_numbers(piece), "en") if piece.strip() else piece for piece in pieces]
    return "".join(part for pair in zip(out, [*places, ""], strict=True) for part in pair)


def _roman(match: re.Match[str]) -> str:
    word = match.group()
    if word in _ROMAN_WORDS:
        return word
    try:
        return str(roman.fromRoman(word.upper()))
    except roman.InvalidRomanNumeralError:
        return word


def _signs(text: str) -> str:
    """A sign word joins its number unless a number comes before it ("5 minus 3" subtracts)."""

    def sign(match: re.Match[str]) -> str:
        before = text[: match.start()].rstrip()
        return match.group() if before[-1:].isdigit() else "-"

    return _SIGN.sub(sign, text)


def rewrite_numbers(text: str) -> str:
    """``text`` with numbers in words, Roman numerals, spaced digits, scientific notation and
    arithmetic in words rewritten as plain digits and operators; everything else unchanged."""
    text = _ROMAN.sub(_roman, text)
    text = _number_words(text)
    text = _signs(text)
    for pattern, symbol in _OPERATORS:
        text = pattern.sub(symbol, text)
    for pattern, rewrite in _PHRASES:
        text = pattern.sub(rewrite, text)
    text = _TIMES_TEN.sub("*", text)
    text = _SCIENTIFIC.sub(lambda m: f"({m.group(1)}*10^{m.group(2)})", text)
    text = _GROUPED_DIGITS.sub(lambda m: re.sub(r"[ _']", "", m.group()), text)
    return _SPACED_DIGITS.sub(lambda m: re.sub(r"[ _']", "", m.group()), text)


__all__ = ["rewrite_numbers"]
