"""The ``reasoning_gym`` verifier on tasks built by the real source loader from the generators
params.yaml uses (mini_sudoku, countdown), plus one generator with reasoning-gym's default
partial-credit scorer: right answers in every accepted layout pass, buried or wrong ones fail
with diagnostics that locate the problem."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import reasoning_gym
import yaml

from rl2f.config import SourceConfig
from rl2f.errors import DataError
from rl2f.tasks.schema import Task
from rl2f.tasks.sources import load_source
from rl2f.tasks.verifiers import get_verifier
from rl2f.tasks.verifiers.reasoning_gym import evaluate_countdown, grid_violations

REPO_ROOT = Path(__file__).resolve().parents[1]


def params_tasks(name: str, size: int) -> list[Task]:
    """Tasks from the source exactly as params.yaml configures it, with fewer of them."""
    # The tiny default trains and evaluates on arithmetic; puzzles, mazes and code are
    # configured for a real model in profiles/qwen.yaml.
    files = ("params.yaml", "profiles/qwen.yaml")
    sources = [
        s for f in files for s in yaml.safe_load((REPO_ROOT / f).read_text())["data"]["sources"]
    ]
    spec = next(s for s in sources if s["name"] == name)
    tasks = load_source(SourceConfig.model_validate({**spec, "size": size}))
    assert tasks and all(task.verifier == "reasoning_gym" for task in tasks)
    return tasks


def grid_text(grid: list[list[int]]) -> str:
    return "\n".join(" ".join(str(cell) for cell in row) for row in grid)


@pytest.fixture(scope="module")
def sudoku_tasks() -> list[Task]:
    return params_tasks("mini_sudoku", size=8)


@pytest.fixture(scope="module")
def countdown_tasks() -> list[Task]:
    return params_tasks("countdown", size=8)


# ---------------------------------------------------------------- mini_sudoku
def test_sudoku_solution_passes_in_every_accepted_layout(sudoku_tasks: list[Task]):
    verifier = get_verifier("reasoning_gym")
    for task in sudoku_tasks:
        grid = task.answer
        indented = "\n".join(f"    {line}   " for line in grid.splitlines())
        for reply in (
            grid,
            f"{grid}\n",
            f"```\n{grid}\n```",
            f"Let me fill it in.\n```text\n{grid}\n```\nDone.",
            f"\\boxed{{{grid}}}",
            f"Answer:\n{grid}",
            f"Answer: {grid}",
            indented,
        ):
            verdict = verifier.verify(task, reply)
            assert verdict.correct, (reply, verdict)
            assert verdict.diagnostics["score"] == 1.0
            assert verdict.diagnostics["malformed"] is False
            assert verdict.diagnostics["violations"] == []
            assert verdict.diagnostics["wrong_cells"] == []


def test_sudoku_solution_buried_in_prose_does_not_count(sudoku_tasks: list[Task]):
    task = sudoku_tasks[0]
    entry = task.verifier_config["entry"]
    reply = f"Here is the solved puzzle:\n{task.answer}\nI checked every row"
    # reasoning-gym itself would give partial credit for this reply.
    raw_score = reasoning_gym.get_score_answer_fn("mini_sudoku")(reply, entry)
    assert 0 < raw_score < 1
    verdict = get_verifier("reasoning_gym").verify(task, reply)
    assert not verdict.correct
    assert verdict.diagnostics["got"] == reply
    assert verdict.diagnostics["malformed"] is True


def test_sudoku_swapped_cells_are_located_without_the_solution(sudoku_tasks: list[Task]):
    verifier = get_verifier("reasoning_gym")
    for task in sudoku_tasks:
        metadata = task.verifier_config["entry"]["metadata"]
        puzzle, solution = metadata["puzzle"], metadata["solution"]
        row = next(r for r in range(4) if sum(1 for v in puzzle[r] if v == 0) >= 2)
        first, second = [c for c in range(4) if puzzle[row][c] == 0][:2]
        wrong = copy.deepcopy(solution)
        wrong[row][first], wrong[row][second] = wrong[row][second], wrong[row][first]

        verdict = verifier.verify(task, grid_text(wrong))
        diagnostics = verdict.diagnostics
        assert not verdict.correct
        assert diagnostics["malformed"] is False
        assert diagnostics["wrong_cells"] == [[row, first], [row, second]]
        assert diagnostics["changed_givens"] == []
        flagged_columns = {v["index"] for v in diagnostics["violations"] if v["unit"] == "column"}
        assert flagged_columns == {first, second}
        assert not any(v["unit"] == "row" for v in diagnostics["violations"])
        assert diagnostics["expected"] == task.answer


def test_sudoku_changed_given_and_unfilled_cells(sudoku_tasks: list[Task]):
    task = sudoku_tasks[0]
    metadata = task.verifier_config["entry"]["metadata"]
    puzzle, solution = metadata["puzzle"], metadata["solution"]
    r, c = next((r, c) for r in range(4) for c in range(4) if puzzle[r][c])
    wrong = copy.deepcopy(solution)
    wrong[r][c] = wrong[r][c] % 4 + 1
    diagnostics = get_verifier("reasoning_gym").verify(task, grid_text(wrong)).diagnostics
    assert diagnostics["changed_givens"] == [[r, c]]
    assert diagnostics["wrong_cells"] == [[r, c]]
    assert {v["unit"] for v in diagnostics["violations"]} == {"row", "column", "box"}

    # Sending the puzzle back unsolved: malformed, and the blanks are listed.
    unsolved = "\n".join(" ".join(str(v) if v else "_" for v in row) for row in puzzle)
    verdict = get_verifier("reasoning_gym").verify(task, unsolved)
    blanks = [[r, c] for r in range(4) for c in range(4) if not puzzle[r][c]]
    assert not verdict.correct
    assert verdict.diagnostics["malformed"] is True
    assert verdict.diagnostics["empty_cells"] == blanks
    assert verdict.diagnostics["changed_givens"] == []


def test_sudoku_right_digits_in_the_wrong_layout_are_malformed(sudoku_tasks: list[Task]):
    task = sudoku_tasks[0]
    squashed = task.answer.replace(" ", "")
    verdict = get_verifier("reasoning_gym").verify(task, squashed)
    assert not verdict.correct
    assert 0 < verdict.diagnostics["score"] < 1  # reasoning-gym's own partial credit
    assert verdict.diagnostics["malformed"] is True
    assert verdict.diagnostics["wrong_cells"] == []  # the digits are right; only format is off


def test_grid_violations_name_each_duplicate():
    rows_and_boxes = [[1, 1, 3, 4], [3, 4, 1, 2], [2, 3, 4, 1], [4, 2, 2, 3]]
    assert grid_violations(rows_and_boxes) == [
        {"unit": "row", "index": 0, "duplicates": [1]},
        {"unit": "row", "index": 3, "duplicates": [2]},
        {"unit": "box", "index": 0, "duplicates": [1]},
        {"unit": "box", "index": 2, "duplicates": [2]},
    ]
    columns = [[1, 2, 3, 4], [1, 2, 3, 4], [3, 4, 1, 2], [4, 3, 0, 1]]  # 0: an empty cell
    assert grid_violations(columns) == [
        {"unit": "column", "index": 0, "duplicates": [1]},
        {"unit": "column", "index": 1, "duplicates": [2]},
        {"unit": "column", "index": 2, "duplicates": [3]},
        {"unit": "column", "index": 3, "duplicates": [4]},
        {"unit": "box", "index": 0, "duplicates": [1, 2]},
        {"unit": "box", "index": 1, "duplicates": [3, 4]},
        {"unit": "box", "index": 2, "duplicates": [3, 4]},
        {"unit": "box", "index": 3, "duplicates": [1]},
    ]


# ---------------------------------------------------------------- countdown
def test_countdown_reference_and_equivalent_expressions_pass(countdown_tasks: list[Task]):
    verifier = get_verifier("reasoning_gym")
    for task in countdown_tasks:
        target = task.verifier_config["entry"]["metadata"]["target"]
        for reply in (task.answer, f"Answer: {task.answer}", f"\\boxed{{({task.answer})}}"):
            verdict = verifier.verify(task, reply)
            assert verdict.correct, (reply, verdict)
            assert verdict.diagnostics["value"] == target
            assert verdict.diagnostics["unused"] == []
            assert verdict.diagnostics["numbers_not_allowed"] == []
            assert verdict.diagnostics["error"] is None


def test_countdown_wrong_expressions_explain_what_is_wrong(countdown_tasks: list[Task]):
    verifier = get_verifier("reasoning_gym")
    task = countdown_tasks[0]
    metadata = task.verifier_config["entry"]["metadata"]
    numbers, target = metadata["numbers"], metadata["target"]

    # All numbers, each once, but only added: the value is reported, nothing unused.
    summed = " + ".join(str(n) for n in numbers)
    verdict = verifier.verify(task, f"Answer: {summed}")
    assert verdict.correct == (sum(numbers) == target)
    assert verdict.diagnostics["value"] == sum(numbers)
    assert verdict.diagnostics["target"] == target
    assert verdict.diagnostics["unused"] == []

    # A number left out and one used twice.
    partial = f"{task.answer} + {numbers[0]}"
    verdict = verifier.verify(task, f"Answer: {partial}")
    assert not verdict.correct
    assert verdict.diagnostics["numbers_not_allowed"] == [numbers[0]]
    shorter = " * ".join(str(n) for n in numbers[1:])
    verdict = verifier.verify(task, f"Answer: {shorter}")
    assert not verdict.correct
    assert verdict.diagnostics["unused"] == [numbers[0]]

    # The target written after '=' breaks the required format.
    verdict = verifier.verify(task, f"Answer: {task.answer} = {target}")
    assert not verdict.correct
    assert verdict.diagnostics["value"] is None
    assert "'='" in verdict.diagnostics["error"]


def test_countdown_answer_buried_in_prose_does_not_count(countdown_tasks: list[Task]):
    task = countdown_tasks[0]
    verdict = get_verifier("reasoning_gym").verify(task, f"I found {task.answer} works")
    assert not verdict.correct
    assert verdict.diagnostics["score"] == 0.0
    assert "unsupported characters" in verdict.diagnostics["error"]


def test_countdown_code_never_reaches_the_scorer(countdown_tasks: list[Task], tmp_path: Path):
    """countdown's scorer hands the answer to sympy's parse_expr, an eval; the AST gate must
    stop anything that is not integer arithmetic before it gets there."""
    marker = tmp_path / "pwned"
    payload = f"__import__('os').system('touch {marker}')"
    for reply in (payload, f"Answer: {payload}", "Answer: 9**9**9**9"):
        verdict = get_verifier("reasoning_gym").verify(countdown_tasks[0], reply)
        assert not verdict.correct
        assert verdict.diagnostics["score"] == 0.0
        assert verdict.diagnostics["error"]
    assert not marker.exists()


@pytest.mark.parametrize(
    ("text", "value", "numbers", "error"),
    [
        ("(3 + 5) * 2 / 4", 4, [3, 5, 2, 4], None),
        ("10 / 4", 2.5, [10, 4], None),
        ("-(2 - 7)", 5, [2, 7], None),
        ("8 / (4 - 4)", None, [8, 4, 4], "division by zero"),
        ("2.5 * 2", None, [2, 5, 2], "unsupported characters"),  # as the scorer counts
        ("2 ** 3", None, [2, 3], "only integers"),
        ("3 // 2", None, [3, 2], "only integers"),
        ("(1 + 2", None, [1, 2], "not an arithmetic expression"),
        ("", None, [], "empty answer"),
    ],
)
def test_evaluate_countdown(text, value, numbers, error):
    evaluation = evaluate_countdown(text)
    assert (None if evaluation.value is None else float(evaluation.value)) == value
    assert sorted(evaluation.numbers) == sorted(numbers)
    assert (evaluation.error is None) == (error is None)
    if error:
        assert error in evaluation.error


# ---------------------------------------------------------------- generic generators
def test_generic_generator_is_exact_where_reasoning_gym_gives_partial_credit():
    entry = reasoning_gym.create_dataset("spell_backward", size=1, seed=5)[0]
    task = Task(
        domain="puzzle",
        source="reasoning_gym:spell_backward",
        prompt=entry["question"],
        answer=entry["answer"],
        verifier="reasoning_gym",
        verifier_config={"dataset": "spell_backward", "entry": entry},
    )
    verifier = get_verifier("reasoning_gym")
    right = verifier.verify(task, f"Answer: {entry['answer']}")
    assert right.correct
    assert right.diagnostics == {"expected": entry["answer"], "got": entry["answer"], "score": 1.0}

    buried = f"{entry['answer']} is the word spelled backward"
    assert 0 < reasoning_gym.get_score_answer_fn("spell_backward")(buried, entry) < 1
    verdict = verifier.verify(task, buried)
    assert not verdict.correct
    assert verdict.diagnostics["got"] == buried

    wrong = verifier.verify(task, f"Answer: {entry['answer'][:-1]}")
    assert not wrong.correct
    assert 0 < wrong.diagnostics["score"] < 1


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({}, "verifier_config.dataset"),
        ({"dataset": "mini_sudoku"}, "verifier_config.entry"),
        ({"dataset": "mini_sudoku", "entry": {"question": "q"}}, "entry.answer"),
        ({"dataset": "no_such_generator", "entry": {"answer": "1"}}, "no_such_generator"),
        ({"dataset": "mini_sudoku", "entry": {"answer": "1", "metadata": {}}}, "does not fit"),
    ],
)
def test_bad_verifier_config_is_a_data_error_naming_the_field(config, message):
    task = Task(
        domain="puzzle",
        source="test",
        prompt="?",
        answer="1",
        verifier="reasoning_gym",
        verifier_config=config,
    )
    with pytest.raises(DataError, match=message) as raised:
        get_verifier("reasoning_gym").verify(task, "1")
    assert task.id in str(raised.value)
