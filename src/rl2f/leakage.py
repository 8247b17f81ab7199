"""The leak guard: no critique reaches the student if it gives away the privileged answer.

The paper controls leaks with a prompt instruction and a judge after the fact; here every
critique is checked *in the loop*, before the student sees it, and a leaking one is regenerated
or replaced by a safe fallback (the loop, :mod:`rl2f.teachers.guarded`, asks the teacher again;
this module only judges text, so it needs no teacher). Three checks, each a flag of its own so
the rate of every kind of leak can be reported:

- ``answer_string``: the normalised answer appears in the critique as a whole run of tokens.
  Tokens are numbers, words and operators, so "12" leaks in "the answer is 12." but not in
  "123", and a grid or move list leaks whatever its separators ("2 1\\n4 3" = "[[2, 1], [4, 3]]").
- ``numeric_equivalent``: a number or arithmetic/LaTeX expression in the critique equals the
  answer's value: exactly (0.5 leaks 1/2), symbolically through math-verify (sqrt(12) leaks
  2*sqrt(3)), or as the answer rounded to the decimals written (3.46 leaks 2*sqrt(3)).
- ``written_number``: the same comparison after numbers written another way are read as digits
  (:func:`rl2f.tasks.number_forms.rewrite_numbers`): words ("minus twelve", "one hundred and
  five"), spaced digits ("1 2"), scientific notation ("1.2e1"), Roman numerals ("XII") and
  arithmetic in words ("seven plus five", "the sum of 10 and 2"). Only what the plain check above
  did not already find counts here, so the two rates add up.
- ``solution_overlap``: the critique contains a large share of the reference solution's token
  n-grams (pasting the solution code), not counting n-grams the public prompt already shows.
- ``llm_judge``: optional (:class:`LeakJudge`, only when a guard is given one): a language model
  asked whether the critique reveals the answer, as in the paper. It reads only critiques the
  string checks passed, so its count is the leaks that strings alone would have missed.

The rule for text the student wrote: the invariant is that nothing the student is conditioned on
contains the answer unless the student wrote it. A wrong attempt cannot be the answer, so a
critique has no reason to repeat it: the guard flags every occurrence, quotes included. Public
facts are not leaks: an expression copied from the prompt (restating the problem) and, when the
answer is an expression rather than a number, its value if the prompt states it (the target of a
countdown puzzle).

Limits, by design of a string-level guard: a hint that lets the student *infer* the answer (the
exact error together with their own number) is not detected here; the oracle teacher is written
so its hints never pin the answer down, and LLM teachers are told not to.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from fractions import Fraction
from functools import lru_cache
from typing import Any

from rl2f.config import SamplingConfig, TeacherConfig
from rl2f.engines.base import ChatEngine
from rl2f.tasks.arithmetic import arithmetic_value
from rl2f.tasks.number_forms import rewrite_numbers
from rl2f.tasks.schema import Task
from rl2f.tasks.verifiers.base import Verdict

CHECKS = ("answer_string", "numeric_equivalent", "written_number", "solution_overlap", "llm_judge")


# ------------------------------------------------------------------ text normalisation
_UNICODE_OPERATORS = str.maketrans(
    {"−": "-", "–": "-", "—": "-", "×": "*", "·": "*", "⋅": "*", "÷": "/", "∕": "/"}
)
_FRAC = re.compile(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}")
_LATEX_WORDS = (
    (re.compile(r"\\(?:cdot|times)"), "*"),
    (re.compile(r"\\div"), "/"),
    (re.compile(r"\\(?:left|right|displaystyle)\b"), ""),
    (re.compile(r"\\[,;:! ]"), ""),
)
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")


def normalize_text(text: str) -> str:
    """One spelling for what can be written several ways: unicode forms and operators, LaTeX
    fractions and products, thousands separators, case."""
    text = unicodedata.normalize("NFKC", text).translate(_UNICODE_OPERATORS)
    previous = None
    while previous != text:  # nested \frac{\frac{..}{..}}{..} resolve from the inside out
        previous, text = text, _FRAC.sub(r"(\1)/(\2)", text)
    for pattern, replacement in _LATEX_WORDS:
        text = pattern.sub(replacement, text)
    return _THOUSANDS.sub("", text).casefold()


_TOKEN = re.compile(r"\d+(?:\.\d+)?|[^\W\d_]+|[-+*/^=<>%]")


def answer_tokens(text: str) -> list[str]:
    """Numbers, words and operators; brackets, quotes, commas and line breaks are layout.
    A minus right after a non-number (start, operator, word) is a sign and joins the number, so
    "-4" is one token in "x = -4" but "7 - 4" stays three."""
    tokens: list[str] = []
    for token in _TOKEN.findall(normalize_text(text)):
        previous = tokens[-1] if tokens else None
        if (
            token[0].isdigit()
            and previous == "-"
            and (len(tokens) < 2 or not tokens[-2][-1].isdigit())
        ):
            tokens[-1] = "-" + token
        else:
            tokens.append(token)
    return tokens


def _contains_run(haystack: Sequence[str], needle: Sequence[str]) -> bool:
    if not needle:
        return False
    sep = "\x1f"
    return f"{sep}{sep.join(needle)}{sep}" in f"{sep}{sep.join(haystack)}{sep}"


# ------------------------------------------------------------------ symbolic (math-verify)
def _math_compare(reference: str, candidate: str) -> Verdict:
    """``candidate`` checked against ``reference`` by the ``math`` verifier, which runs
    math-verify in a worker process with a hard timeout: a critique holding pathological LaTeX
    (a huge power tower) cannot hang the rollout, from any thread."""
    from rl2f.tasks.verifiers.math import MathVerifier

    task = Task(domain="math", source="leak-guard", prompt="", answer=reference, verifier="math")
    return MathVerifier().verify(task, f"\\boxed{{{candidate}}}")


@lru_cache(maxsize=4096)
def _approximate(answer: str) -> float | None:
    """Float value of a symbolic answer (2*sqrt(3)), from the verifier's own difference to 0."""
    difference = _math_compare(answer, "0").diagnostics.get("numeric_error")
    return -difference if isinstance(difference, int | float) else None


# ------------------------------------------------------------------ what is privileged
_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?![\w])")
_PLAIN_NUMBER = re.compile(r"^[-+]?\d+(?:\.\d+)?$|^[-+]?\d+\s*/\s*\d+$")


@dataclass(frozen=True)
class _Privileged:
    """Everything the checks compare against, computed once per task."""

    answer: str
    answer_tokens: tuple[str, ...]
    value: Fraction | None  # exact value when the answer is a rational number or expression
    symbolic: bool  # a math answer that is not rational (sqrt, pi, ...): math-verify compares
    answer_is_number: bool  # "12", "-4", "1/2": the value itself is the answer
    value_is_public: bool  # an expression answer whose value the prompt already states
    prompt_compact: str  # normalised prompt without spaces, to recognise restated expressions
    prompt_written_compact: str  # the same with numbers in words read as digits
    solution_ngrams: frozenset[tuple[str, ...]]

    @property
    def public_text(self) -> str:
        """Where a restated expression is looked up: the prompt as written and as read."""
        return f"{self.prompt_compact}\x1f{self.prompt_written_compact}"


@lru_cache(maxsize=4096)
def _privileged(domain: str, prompt: str, answer: str, solution: str | None, n: int) -> _Privileged:
    ascii_answer = normalize_text(answer).replace("$", "").strip()
    value = arithmetic_value(ascii_answer)
    answer_is_number = bool(_PLAIN_NUMBER.match(ascii_answer))
    prompt_norm = normalize_text(prompt)
    prompt_values = {Fraction(match) for match in _NUMBER.findall(prompt_norm)}
    return _Privileged(
        answer=answer.strip(),
        answer_tokens=tuple(answer_tokens(answer)),
        value=value,
        symbolic=value is None and domain == "math" and bool(answer.strip()),
        answer_is_number=answer_is_number,
        value_is_public=value is not None and not answer_is_number and value in prompt_values,
        prompt_compact=re.sub(r"\s+", "", prompt_norm),
        prompt_written_compact=re.sub(r"\s+", "", normalize_text(rewrite_numbers(prompt))),
        solution_ngrams=_solution_ngrams(solution, prompt, n) if solution else frozenset(),
    )


# ------------------------------------------------------------------ candidates in a critique
_ARITHMETIC_RUN = re.compile(r"[-+(]*\d[\d.\s()+\-*/^]*")
_SIMPLE_FRACTION = re.compile(r"(?<![\w.])-?\d+\s*/\s*\d+(?![\w.])")
_PERCENT = re.compile(r"(?<![\w.])(-?\d+(?:\.\d+)?)\s*(?:%|percent\b)")
_LATEX_SPAN = re.compile(r"\$\$(.+?)\$\$|\$(.+?)\$|\\\((.+?)\\\)|\\\[(.+?)\\\]", re.S)


@dataclass(frozen=True)
class _Candidate:
    text: str
    value: Fraction
    is_expression: bool
    decimals: int  # digits after the point as written: "3.46" -> 2, to compare roundings


def _rounds_to(value: float, candidate: _Candidate) -> bool:
    """3.46 for 2*sqrt(3), 0.33 for 1/3: a rounding of the answer leaks it too. Needs two
    written decimals, so "off by about 0.5" is not read as a rounding of 1/3."""
    if candidate.decimals < 2:
        return False
    tolerance = 0.5 * 10 ** (-candidate.decimals) + 1e-12
    return abs(float(candidate.value) - value) <= tolerance


def _decimals(text: str) -> int:
    return max((len(part) for part in re.findall(r"\.(\d+)", text)), default=0)


def _trim_run(run: str) -> str:
    run = run.strip().rstrip("+-*/^.( \t\n")
    # Unbalanced brackets come from prose around the run: "(see 2 + 3)" -> "2 + 3".
    while run.count("(") > run.count(")") and run.startswith("("):
        run = run[1:].lstrip()
    while run.count(")") > run.count("(") and run.endswith(")"):
        run = run[:-1].rstrip()
    return run


def numeric_candidates(text: str) -> list[_Candidate]:
    """Every number, simple fraction, percentage and arithmetic expression written in the text,
    with its exact value."""
    normalized = normalize_text(text)
    found: dict[tuple[str, bool], _Candidate] = {}

    def add(candidate_text: str, value: Fraction | None, is_expression: bool) -> None:
        if value is not None:
            key = (re.sub(r"\s+", "", candidate_text), is_expression)
            found.setdefault(key, _Candidate(key[0], value, is_expression, _decimals(key[0])))

    for match in _NUMBER.finditer(normalized):
        add(match.group(), Fraction(match.group()), False)
    for match in _SIMPLE_FRACTION.finditer(normalized):
        add(match.group(), arithmetic_value(match.group()), True)
    for match in _PERCENT.finditer(normalized):
        add(match.group(), Fraction(match.group(1)) / 100, False)
    for match in _ARITHMETIC_RUN.finditer(normalized):
        run = _trim_run(match.group())
        if re.search(r"\d\)*\s*[-+*/^]\s*[-+(]*\d", run):
            add(run, arithmetic_value(run), True)
    return list(found.values())


def latex_spans(text: str) -> list[str]:
    """Math written as LaTeX: $...$, \\(...\\), \\[...\\] and \\boxed{...} (braces balanced)."""
    spans = [
        next(group for group in match.groups() if group) for match in _LATEX_SPAN.finditer(text)
    ]
    start = text.find("\\boxed{")
    while start != -1:
        depth, position = 0, start + len("\\boxed")
        for position in range(start + len("\\boxed"), len(text)):
            depth += {"{": 1, "}": -1}.get(text[position], 0)
            if depth == 0:
                break
        spans.append(text[start + len("\\boxed{") : position])
        start = text.find("\\boxed{", position)
    return [span.strip() for span in spans if span.strip()]


# ------------------------------------------------------------------ code overlap
_CODE_TOKEN = re.compile(r"[A-Za-z_]\w*|\d+(?:\.\d+)?|==|!=|<=|>=|\*\*|//|->|[-+*/%<>=]=?|[^\s\w]")
_COMMENT = re.compile(r"#[^\n]*")


def code_tokens(text: str) -> list[str]:
    return _CODE_TOKEN.findall(_COMMENT.sub("", text))


def _ngrams(tokens: Sequence[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}


def _solution_ngrams(solution: str, prompt: str, n: int) -> frozenset[tuple[str, ...]]:
    """The solution's n-grams that the prompt does not already show (a function signature or
    docstring quoted back is public). Solutions shorter than n use their whole token run."""
    tokens = code_tokens(solution)
    size = max(2, min(n, len(tokens)))
    return frozenset(_ngrams(tokens, size) - _ngrams(code_tokens(prompt), size))


# ------------------------------------------------------------------ the LLM judge
JUDGE_PROMPT = (
    "A teacher knows the answer to a problem and must not reveal it to the student. Does the "
    "critique below reveal the answer: state it, in any form (digits, words, an expression "
    "equal to it), or give enough to write it down without solving the problem?\n\n"
    "Problem:\n{prompt}\n\nSecret answer: {answer}\n\nCritique:\n{critique}\n\n"
    "Reply with YES or NO only."
)
_VERDICT = re.compile(r"^[\W_]*(yes|no)\b", re.I)


class LeakJudge:
    """A language model asked whether a critique reveals the answer (the paper's post-hoc judge,
    used here in the loop). Any :class:`~rl2f.engines.base.ChatEngine` serves: transformers,
    vLLM or an OpenAI-compatible server.

    Only a reply that starts with YES counts as a leak. A reply that is neither YES nor NO is
    counted in ``unreadable`` and passes: the string checks already ran, and a judge that
    rambles must not turn every critique into the fallback.
    """

    def __init__(
        self,
        engine: ChatEngine,
        sampling: SamplingConfig | None = None,
        template: str = JUDGE_PROMPT,
    ) -> None:
        self.engine = engine
        self.sampling = sampling or SamplingConfig(temperature=0.0, max_new_tokens=4)
        self.template = template
        self.asked = self.revealed = self.unreadable = 0

    def conversation(self, task: Task, critique: str) -> list[dict[str, str]]:
        content = self.template.format(prompt=task.prompt, answer=task.answer, critique=critique)
        return [{"role": "user", "content": content}]

    def judge(self, items: Sequence[tuple[Task, str]]) -> list[bool]:
        """One batched engine call; True where the judge says the critique reveals the answer."""
        if not items:
            return []
        replies = self.engine.chat(
            [self.conversation(task, critique) for task, critique in items], self.sampling
        )
        if len(replies) != len(items):
            raise RuntimeError(f"judge engine returned {len(replies)} replies for {len(items)}")
        verdicts = [self._read(reply) for reply in replies]
        self.asked += len(items)
        self.revealed += sum(verdict is True for verdict in verdicts)
        self.unreadable += sum(verdict is None for verdict in verdicts)
        return [verdict is True for verdict in verdicts]

    @staticmethod
    def _read(reply: str) -> bool | None:
        match = _VERDICT.match(reply or "")
        return None if match is None else match.group(1).lower() == "yes"


# ------------------------------------------------------------------ the guard
@dataclass(frozen=True)
class LeakFlags(Mapping[str, Any]):
    """Which checks fired on one critique, with the text that fired them (for the logs).

    It also reads as a JSON-ready mapping (``dict(flags)``), the form episodes store.
    """

    answer_string: bool = False
    numeric_equivalent: bool = False
    written_number: bool = False
    solution_overlap: bool = False
    llm_judge: bool = False
    evidence: tuple[str, ...] = ()
    overlap: float = 0.0  # share of the solution's private n-grams found in the critique

    @property
    def leaked(self) -> bool:
        return any(getattr(self, name) for name in CHECKS)

    @property
    def fired(self) -> tuple[str, ...]:
        return tuple(name for name in CHECKS if getattr(self, name))

    def __or__(self, other: LeakFlags) -> LeakFlags:
        """Union over several critiques of one request (every rejected regeneration)."""
        return LeakFlags(
            **{name: getattr(self, name) or getattr(other, name) for name in CHECKS},
            evidence=tuple(dict.fromkeys(self.evidence + other.evidence)),
            overlap=max(self.overlap, other.overlap),
        )

    def as_dict(self) -> dict[str, Any]:
        record: dict[str, Any] = {name: getattr(self, name) for name in CHECKS}
        record.update(leaked=self.leaked, evidence=list(self.evidence), overlap=self.overlap)
        return record

    def __getitem__(self, key: str) -> Any:
        return self.as_dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter((*CHECKS, "leaked", "evidence", "overlap"))

    def __len__(self) -> int:
        return len(CHECKS) + 3


class LeakGuard:
    """Checks a critique against one task's privileged answer and solution.

    ``overlap_threshold``: share of the solution's private token n-grams (``ngram_size`` tokens
    each) that a critique may contain before it counts as pasting the solution. ``judge``: an
    optional :class:`LeakJudge` asked about every critique the string checks pass
    (``owns_judge_engine``: ``close()`` closes its engine).
    """

    def __init__(
        self,
        overlap_threshold: float = 0.5,
        ngram_size: int = 4,
        *,
        judge: LeakJudge | None = None,
        owns_judge_engine: bool = False,
    ) -> None:
        if not 0.0 < overlap_threshold <= 1.0:
            raise ValueError(f"overlap_threshold must be in (0, 1], got {overlap_threshold}")
        if ngram_size < 2:
            raise ValueError(f"ngram_size must be at least 2, got {ngram_size}")
        self.overlap_threshold = overlap_threshold
        self.ngram_size = ngram_size
        self.judge = judge
        self.owns_judge_engine = owns_judge_engine

    def check(self, task: Task, critique: str) -> LeakFlags:
        return self.check_many([(task, critique)])[0]

    def close(self) -> None:
        """Close the judge's engine when this guard started it (:func:`make_guard`)."""
        if self.judge is not None and self.owns_judge_engine:
            self.judge.engine.close()

    def check_many(self, items: Sequence[tuple[Task, str]]) -> list[LeakFlags]:
        """Flags for many (task, critique) pairs: the string checks one by one, then the judge,
        if any, in one batched call over the critiques they passed."""
        flags = [self._string_checks(task, critique) for task, critique in items]
        if self.judge is None:
            return flags
        clean = [index for index, item in enumerate(flags) if not item.leaked]
        verdicts = self.judge.judge([items[index] for index in clean])
        for index, revealed in zip(clean, verdicts, strict=True):
            if revealed:
                flags[index] = replace(flags[index], llm_judge=True, evidence=("llm judge",))
        return flags

    def _string_checks(self, task: Task, critique: str) -> LeakFlags:
        private = _privileged(task.domain, task.prompt, task.answer, task.solution, self.ngram_size)
        evidence: list[str] = []

        answer_string = _contains_run(answer_tokens(critique), private.answer_tokens)
        if answer_string:
            evidence.append(" ".join(private.answer_tokens))

        numeric = self._numeric_evidence(private, critique)
        evidence.extend(numeric)
        written = [] if answer_string or numeric else self._written_evidence(private, critique)
        evidence.extend(written)

        overlap = self._overlap(private, critique)
        solution_overlap = overlap >= self.overlap_threshold
        if solution_overlap:
            evidence.append(f"{overlap:.0%} of the solution's n-grams")

        return LeakFlags(
            answer_string=answer_string,
            numeric_equivalent=bool(numeric),
            written_number=bool(written),
            solution_overlap=solution_overlap,
            evidence=tuple(evidence),
            overlap=overlap,
        )

    def _numeric_evidence(self, private: _Privileged, critique: str) -> list[str]:
        if private.value is None and not private.symbolic:
            return []
        hits = self._candidate_hits(private, numeric_candidates(critique), private.public_text)
        # Math written in LaTeX that did not reduce to a plain rational above (sqrt(12), pi/2)
        # goes to math-verify; for a symbolic answer every span does.
        asked = [
            span
            for span in latex_spans(critique)
            if (private.symbolic or arithmetic_value(normalize_text(span)) is None)
            and not self._span_is_public(private, span)
        ]
        hits.extend(span for span in asked if _math_compare(private.answer, span).correct)
        return list(dict.fromkeys(hits))

    def _written_evidence(self, private: _Privileged, critique: str) -> list[str]:
        """Numbers the student could read back that are not written as digits: the critique is
        rewritten in digits and compared again, against the prompt rewritten the same way."""
        if private.value is None and not private.symbolic:
            return []
        rewritten = rewrite_numbers(critique)
        if rewritten == critique:
            return []
        hits = self._candidate_hits(private, numeric_candidates(rewritten), private.public_text)
        return [f"{hit} (written out)" for hit in hits]

    def _candidate_hits(
        self, private: _Privileged, candidates: list[_Candidate], public_prompt: str
    ) -> list[str]:
        approx = float(private.value) if private.value is not None else None
        hits = []
        for candidate in candidates:
            if self._is_public(private, candidate, public_prompt):
                continue
            if private.value is not None and candidate.value == private.value:
                hits.append(candidate.text)
                continue
            if private.symbolic and candidate.decimals >= 2 and approx is None:
                approx = _approximate(private.answer)
            if approx is not None and _rounds_to(approx, candidate):
                hits.append(candidate.text)
        return hits

    @staticmethod
    def _is_public(private: _Privileged, candidate: _Candidate, public_prompt: str) -> bool:
        if candidate.is_expression:
            return candidate.text in public_prompt
        return private.value_is_public and candidate.value == private.value

    @staticmethod
    def _span_is_public(private: _Privileged, span: str) -> bool:
        compact = re.sub(r"\s+", "", normalize_text(span))
        if compact in private.prompt_compact:
            return True
        return (
            private.value_is_public
            and arithmetic_value(compact) == private.value
            and bool(_PLAIN_NUMBER.match(compact))
        )

    def _overlap(self, private: _Privileged, critique: str) -> float:
        if not private.solution_ngrams:
            return 0.0
        size = len(next(iter(private.solution_ngrams)))
        found = private.solution_ngrams & _ngrams(code_tokens(critique), size)
        return len(found) / len(private.solution_ngrams)


__all__ = [
    "CHECKS",
    "LeakFlags",
    "LeakGuard",
    "LeakJudge",
    "answer_tokens",
    "latex_spans",
    "normalize_text",
    "numeric_candidates",
]


def make_guard(cfg: TeacherConfig) -> LeakGuard:
    """The guard ``teacher.judge_model`` asks for: string checks, plus the LLM judge when one is
    named (its engine is started here and closed by ``guard.close()``)."""
    if not cfg.judge_model:
        return LeakGuard()
    from rl2f.engines import make_engine

    judge = LeakJudge(make_engine(cfg.judge_engine, cfg.judge_model))
    return LeakGuard(judge=judge, owns_judge_engine=True)
