"""Answer extraction and the ``math`` verifier, against real math-verify in its real worker
process: equivalent forms, buried and malformed answers, huge numbers, a comparison that never
ends, eight threads at once, and the arithmetic tasks that params.yaml generates."""

from __future__ import annotations

import multiprocessing
import threading
import time
from pathlib import Path

import pytest
import yaml

from rl2f.config import SourceConfig
from rl2f.errors import DataError
from rl2f.tasks.schema import Task
from rl2f.tasks.sources import load_source
from rl2f.tasks.verifiers import get_verifier, verify
from rl2f.tasks.verifiers.extract import (
    Fallback,
    clean_answer,
    extract_answer,
    strict_single_answer,
)
from rl2f.tasks.verifiers.math import MathVerifier, parse_plain_number

REPO_ROOT = Path(__file__).resolve().parents[1]


def math_task(answer: str) -> Task:
    return Task(domain="math", source="test", prompt="?", answer=answer, verifier="math")


def params_source(name: str, size: int) -> SourceConfig:
    """The source exactly as params.yaml configures it, with fewer tasks."""
    # The tiny default trains and evaluates on arithmetic; puzzles, mazes and code are
    # configured for a real model in profiles/qwen.yaml.
    files = ("params.yaml", "profiles/qwen.yaml")
    sources = [
        s for f in files for s in yaml.safe_load((REPO_ROOT / f).read_text())["data"]["sources"]
    ]
    spec = next(s for s in sources if s["name"] == name)
    return SourceConfig.model_validate({**spec, "size": size})


# ---------------------------------------------------------------- extraction
@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("so the total is \\boxed{12}.", "12"),
        ("first \\boxed{3}, no wait: \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("\\boxed{\\boxed{7}}", "7"),
        ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),  # escaped braces do not close the box
        ("\\boxed{12} Answer: 13", "12"),  # a box outranks an Answer: line
        ("Answer: 12.", "12"),
        ("answer:12", "12"),
        ("Answer: 12\nFinal answer: $-3$.", "-3"),
        ("**Final Answer:** $\\frac{1}{2}$.", "\\frac{1}{2}"),
        ("Answer: **12**", "12"),
        ("**Final answer**: 7", "7"),
        ("The answer:\n\n  42  \nbecause...", "42"),
        ("Answer: 12\nbecause 5 + 7 = 12", "12"),
        ("work\n```\n12\n```\n", "12"),
        ("step one\nstep two\n12", "12"),  # last line fallback
        ("Answer: 3.14", "3.14"),
        ("$$x^2$$", "x^2"),
        ("\\(5\\)", "5"),
    ],
)
def test_extract_answer_finds_the_marked_answer(reply: str, expected: str):
    assert extract_answer(reply) == expected


@pytest.mark.parametrize("reply", ["", "   \n ", "so \\boxed{12", "Answer:", "Answer:\n\n"])
def test_extract_answer_returns_none_when_nothing_is_there(reply: str):
    assert extract_answer(reply) is None
    assert extract_answer(None) is None


def test_extract_answer_fallbacks_and_multiline_spans():
    reply = "I think\nit is 12"
    assert extract_answer(reply, fallback=Fallback.LAST_LINE) == "it is 12"
    assert extract_answer(reply, fallback=Fallback.WHOLE) == "I think\nit is 12"
    assert extract_answer(reply, fallback=Fallback.NONE) is None
    grid = "Answer:\n1 2\n3 4\n\nThat is all."
    assert extract_answer(grid) == "1 2"
    assert extract_answer(grid, multiline=True) == "1 2\n3 4"
    assert extract_answer("Answer: 1 2\n3 4", multiline=True) == "1 2\n3 4"


def test_strict_single_answer_never_digs_an_answer_out_of_prose():
    assert strict_single_answer("The path is up up right.") == "The path is up up right"
    assert strict_single_answer("blah\n\\boxed{up up}") == "up up"
    assert strict_single_answer("Answer: up up\nbecause it is short") == "up up"


def test_clean_answer_keeps_separate_formulas_intact():
    assert clean_answer("$1$ and $2$") == "$1$ and $2$"
    assert clean_answer(" $12$. ") == "12"
    assert clean_answer("...") == "..."
    assert clean_answer(" . ") is None


# ---------------------------------------------------------------- equivalent forms
@pytest.mark.parametrize(
    ("expected", "reply"),
    [
        ("12", "Answer: 12."),
        ("12", "\\boxed{12}"),
        ("12", "Answer: 12.0"),
        ("12", "Answer: +012"),
        ("-17", "Final answer: $-17$"),
        ("0", "Answer: -0"),
        ("1000", "Answer: 1,000"),
        ("1/2", "Answer: 0.5"),
        ("0.5", "\\boxed{\\frac{1}{2}}"),
        ("\\frac{1}{2}", "Answer: 1/2"),
        ("0.5", "Answer: \\dfrac{2}{4}"),
        ("2", "\\boxed{\\sqrt{4}}"),
        ("1024", "\\boxed{2^{10}}"),
        ("x^2 + 1", "\\boxed{1 + x^2}"),
        ("\\sqrt{2}/2", "\\boxed{\\frac{1}{\\sqrt{2}}}"),
    ],
)
def test_equivalent_forms_are_correct(expected: str, reply: str):
    verdict = MathVerifier().verify(math_task(expected), reply)
    assert verdict.correct, verdict
    assert verdict.diagnostics["expected"] == expected
    assert verdict.diagnostics["parse_error"] is False
    assert verdict.diagnostics["timeout"] is False


def test_plain_number_fast_path_is_exact():
    assert parse_plain_number("-0").canonical == "0"
    assert parse_plain_number("1,000.50").canonical == "1000.5"
    assert parse_plain_number("\\frac{3}{6}").value == parse_plain_number("0.5").value
    assert parse_plain_number("1/0") is None
    assert parse_plain_number("2x") is None
    assert parse_plain_number("1,00") is None  # not a thousands separator


def test_a_reference_is_parsed_once_and_each_keeps_its_own_verdicts():
    """The worker caches each reference's parse; a cached parse must give the same verdicts as
    a fresh one and never stand in for another reference."""
    from rl2f.tasks.verifiers.math import _compare_with_math_verify, _parse_reference

    _parse_reference.cache_clear()
    first = _compare_with_math_verify("x^2 + 1", "1 + x^2")
    again = _compare_with_math_verify("x^2 + 1", "1 + x^2")
    assert first["equal"] and again == first
    assert _parse_reference.cache_info().hits == 1
    assert not _compare_with_math_verify("x^2 + 1", "x^2 - 1")["equal"]
    assert _compare_with_math_verify("x^2 - 1", "x^2 - 1")["equal"]
    assert _parse_reference.cache_info().misses == 2


# ---------------------------------------------------------------- wrong answers
@pytest.mark.parametrize(("reply", "error"), [("Answer: 15", 3.0), ("\\boxed{9}", -3.0)])
def test_wrong_numbers_report_how_far_off(reply: str, error: float):
    verdict = MathVerifier().verify(math_task("12"), reply)
    assert not verdict.correct
    assert verdict.diagnostics["numeric_error"] == error
    assert verdict.diagnostics["parse_error"] is False


def test_numeric_error_for_latex_numbers_comes_from_sympy():
    verdict = MathVerifier().verify(math_task("1/2"), "\\boxed{\\sqrt{9}}")
    assert not verdict.correct
    assert verdict.diagnostics["numeric_error"] == pytest.approx(2.5)


@pytest.mark.parametrize(
    "reply",
    [
        "The sum is 12",  # no marker: the last line is prose, not 12
        "I think 12 or maybe 13",
        "Answer: 12 or 13",
        "Answer: 12\nActually, Answer: 13",  # the last answer counts
        "\\boxed{12} is wrong, it is \\boxed{13}",
    ],
)
def test_buried_or_superseded_answers_are_wrong(reply: str):
    verdict = MathVerifier().verify(math_task("12"), reply)
    assert not verdict.correct, verdict


@pytest.mark.parametrize("reply", ["Answer: \\frac{1}{", "Answer: }{", "\\boxed{\\sqrt{}}}"])
def test_malformed_latex_is_a_parse_error_not_an_exception(reply: str):
    verdict = MathVerifier().verify(math_task("12"), reply)
    assert not verdict.correct
    assert verdict.diagnostics["parse_error"] is True
    assert verdict.diagnostics["numeric_error"] is None


def test_no_answer_at_all():
    for reply in ("", "so \\boxed{12"):
        verdict = MathVerifier().verify(math_task("12"), reply)
        assert not verdict.correct
        assert verdict.extracted is None
        assert verdict.diagnostics["got"] is None
        assert verdict.diagnostics["parse_error"] is False


def test_empty_reference_answer_is_a_data_error():
    with pytest.raises(DataError, match="field 'answer' is empty"):
        MathVerifier().verify(math_task("  "), "Answer: 1")


# ---------------------------------------------------------------- robustness
@pytest.mark.parametrize("reply", ["Answer: 10**100000", "Answer: " + "9" * 50000])
def test_huge_numbers_neither_hang_nor_crash(reply: str):
    started = time.monotonic()
    verdict = MathVerifier().verify(math_task("12"), reply)
    assert time.monotonic() - started < 10
    assert not verdict.correct
    assert verdict.diagnostics["timeout"] is False
    assert verdict.diagnostics["numeric_error"] is None  # too large for a float


def test_huge_equal_numbers_are_correct():
    huge = "9" * 50000
    assert MathVerifier().verify(math_task(huge), f"Answer: {huge}").correct
    assert not MathVerifier().verify(math_task(huge), f"Answer: {huge[:-1]}8").correct


def test_endless_comparison_times_out_and_the_worker_recovers():
    verifier = MathVerifier(timeout_s=1.0)
    started = time.monotonic()
    verdict = verifier.verify(math_task("12"), "\\boxed{(10^{7})!}")  # sympy would run for ages
    assert time.monotonic() - started < 1.0 + 5.0
    assert not verdict.correct
    assert verdict.diagnostics["timeout"] is True
    # The killed worker is replaced: the next comparison works.
    assert MathVerifier().verify(math_task("2"), "\\boxed{\\sqrt{4}}").correct


def test_eight_threads_at_once_get_the_right_verdicts():
    cases = [
        ("2", "\\boxed{\\sqrt{4}}", True),
        ("3", "\\boxed{\\sqrt{4}}", False),
        ("12", "Answer: 12", True),
        ("x+1", "\\boxed{1+x}", True),
        ("\\frac{1}{2}", "\\boxed{\\frac{2}{4}}", True),
        ("5", "Answer: 6", False),
        ("12", "Answer: \\frac{1}{", False),
        ("0.5", "Answer: 1/2", True),
    ]
    barrier = threading.Barrier(len(cases))
    results: dict[int, bool] = {}
    errors: list[BaseException] = []

    def run(index: int) -> None:
        expected, reply, correct = cases[index]
        barrier.wait()
        try:
            for _ in range(3):
                verdict = verify(math_task(expected), reply)
                results.setdefault(index, True)
                results[index] &= verdict.correct == correct
        except BaseException as exc:  # collected and re-raised in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(cases))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    assert results == {i: True for i in range(len(cases))}


def _verify_in_child(queue: multiprocessing.Queue) -> None:
    queue.put(MathVerifier().verify(math_task("2"), "\\boxed{\\sqrt{4}}").correct)


def test_a_forked_child_gets_its_own_workers():
    assert MathVerifier().verify(math_task("3"), "\\boxed{\\sqrt{9}}").correct  # parent pool
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_verify_in_child, args=(queue,))
    child.start()
    assert queue.get(timeout=120) is True
    child.join(timeout=30)
    assert child.exitcode == 0
    # The parent's workers were not disturbed by the child.
    assert MathVerifier().verify(math_task("3"), "\\boxed{\\sqrt{9}}").correct


# ---------------------------------------------------------------- params.yaml tasks
@pytest.mark.parametrize("name", ["basic_arithmetic", "chain_sum"])
def test_generated_arithmetic_tasks_accept_their_answer_and_reject_wrong_ones(name: str):
    tasks = load_source(params_source(name, size=25))
    assert tasks and all(task.verifier == "math" for task in tasks)
    verifier = get_verifier("math")
    for task in tasks:
        assert verifier.verify(task, f"Answer: {task.answer}").correct, task.answer
        assert verifier.verify(task, task.answer).correct, task.answer  # a bare reply
        assert verifier.verify(task, f"\\boxed{{{task.answer}}}").correct, task.answer
        for offset in (1, -2):
            wrong = int(task.answer) + offset
            verdict = verifier.verify(task, f"Answer: {wrong}")
            assert not verdict.correct
            assert verdict.diagnostics["numeric_error"] == offset
            assert verdict.diagnostics["got"] == str(wrong)
        buried = verifier.verify(task, f"It could be {task.answer} or {int(task.answer) + 1}")
        assert not buried.correct


@pytest.mark.parametrize(
    "reply", ["Answer: -1 + 3", "Answer: 5 - 3 = 2", "Answer: 4/2 + 0", "7 + 8 - 9 + 4 ="]
)
def test_arithmetic_left_undone_is_not_a_numeric_answer(reply: str) -> None:
    """Echoing the question's expression, or an equation whose right side happens to be the
    answer, must not earn a plain-number task's reward."""
    verdict = verify(math_task("2"), reply)
    assert not verdict.correct and verdict.diagnostics["unevaluated"]


@pytest.mark.parametrize("reply", ["Answer: 2", "Answer: - 2", "Answer: 1,000", "Answer: 4/2"])
def test_plain_numbers_are_still_accepted_in_any_spelling(reply: str) -> None:
    expected = "1000" if "," in reply else ("-2" if "-" in reply else "2")
    assert verify(math_task(expected), reply).correct
