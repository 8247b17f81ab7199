"""The ``maze`` verifier: move sequences walked on real reasoning-gym ``shortest_path`` grids
(the source params.yaml uses, infeasible ones included) and on small hand-made grids whose every
diagnostic is known; verdicts are checked against the generator's own path validator."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import pytest
import reasoning_gym
import yaml

from rl2f.config import SourceConfig
from rl2f.errors import DataError
from rl2f.tasks.schema import Task
from rl2f.tasks.sources import load_source
from rl2f.tasks.verifiers import get_verifier

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def maze_tasks() -> list[Task]:
    # The tiny default trains and evaluates on arithmetic; puzzles, mazes and code are
    # configured for a real model in profiles/qwen.yaml.
    files = ("params.yaml", "profiles/qwen.yaml")
    sources = [
        s for f in files for s in yaml.safe_load((REPO_ROOT / f).read_text())["data"]["sources"]
    ]
    spec = next(s for s in sources if s["name"] == "shortest_path")
    tasks = load_source(SourceConfig.model_validate({**spec, "size": 24}))
    assert all(task.verifier == "maze" for task in tasks)
    return tasks


@pytest.fixture(scope="module")
def generator():
    return reasoning_gym.create_dataset("shortest_path", size=1, seed=0)


def grid_task(matrix: list[list[str]], generator) -> Task:
    """A task for a hand-made grid, its answer computed by the generator's own search."""
    moves = generator._get_answer(matrix)
    answer = " ".join(moves) if moves else "infeasible"
    entry = {"question": "find the path", "answer": answer, "metadata": {"matrix": matrix}}
    return Task(
        domain="maze",
        source="test",
        prompt="find the path",
        answer=answer,
        verifier="maze",
        verifier_config={"dataset": "shortest_path", "entry": entry},
    )


# start (0,0), goal (2,2); the only shortest path is down down right right.
CORRIDOR = [
    ["*", "O", "X"],
    ["O", "X", "O"],
    ["O", "O", "#"],
]
WALLED_IN = [["*", "X"], ["X", "#"]]


# ---------------------------------------------------------------- generated tasks
def test_reference_answers_pass_and_infeasible_ones_are_covered(maze_tasks: list[Task]):
    verifier = get_verifier("maze")
    assert any(task.answer == "infeasible" for task in maze_tasks)
    assert any(task.answer != "infeasible" for task in maze_tasks)
    for task in maze_tasks:
        for reply in (task.answer, f"Answer: {task.answer.upper()}.", f"\\boxed{{{task.answer}}}"):
            verdict = verifier.verify(task, reply)
            assert verdict.correct, (reply, verdict)
            assert verdict.diagnostics["score"] == 1.0
            assert verdict.diagnostics["feasible"] == (task.answer != "infeasible")


def test_every_reordering_of_the_reference_is_judged_like_the_generator(
    maze_tasks: list[Task], generator
):
    """Any valid path of the shortest length is right, not only the reference one."""
    verifier = get_verifier("maze")
    rng = random.Random(0)
    alternatives_accepted = 0
    for task in maze_tasks:
        if task.answer == "infeasible":
            continue
        matrix = task.verifier_config["entry"]["metadata"]["matrix"]
        moves = task.answer.split()
        orders = {tuple(p) for p in itertools.islice(itertools.permutations(moves), 2000)}
        for order in rng.sample(sorted(orders), min(30, len(orders))):
            verdict = verifier.verify(task, " ".join(order))
            valid = generator._is_valid_path(matrix, list(order))
            assert verdict.correct == valid, (task.answer, order, verdict.diagnostics)
            assert verdict.diagnostics["reached_goal"] == valid
            assert (verdict.diagnostics["first_invalid_move"] is None) == valid
            alternatives_accepted += valid and list(order) != moves
    assert alternatives_accepted > 0


def test_infeasible_claims_on_solvable_grids_and_paths_on_unsolvable_ones(
    maze_tasks: list[Task],
):
    verifier = get_verifier("maze")
    solvable = next(t for t in maze_tasks if t.answer != "infeasible")
    verdict = verifier.verify(solvable, "infeasible")
    assert not verdict.correct
    assert verdict.diagnostics["claimed_infeasible"] is True
    assert verdict.diagnostics["got_moves"] == []

    unsolvable = next(t for t in maze_tasks if t.answer == "infeasible")
    for reply in ("up", "down", "left", "right"):
        verdict = verifier.verify(unsolvable, reply)
        assert not verdict.correct
        assert verdict.diagnostics["expected_length"] is None
        assert verdict.diagnostics["reached_goal"] is False


# ---------------------------------------------------------------- hand-made grids
@pytest.mark.parametrize(
    ("reply", "first_invalid", "reason", "final", "reached", "shortest", "correct"),
    [
        ("down down right right", None, None, [2, 2], True, True, True),
        ("Answer: Down, down, RIGHT, right.", None, None, [2, 2], True, True, True),
        ("right right", 1, "blocked", [0, 1], False, False, False),
        ("up", 0, "out_of_bounds", [0, 0], False, False, False),
        ("down down fly", 2, "unknown_move", [2, 0], False, False, False),
        ("down down right", None, None, [2, 1], False, False, False),
        ("down down right left right right", None, None, [2, 2], True, False, False),
        ("I would go down down right right", 0, "unknown_move", [0, 0], False, False, False),
    ],
)
def test_walk_diagnostics(
    generator, reply, first_invalid, reason, final, reached, shortest, correct
):
    verdict = get_verifier("maze").verify(grid_task(CORRIDOR, generator), reply)
    diagnostics = verdict.diagnostics
    assert verdict.correct is correct
    assert diagnostics["first_invalid_move"] == first_invalid
    assert diagnostics["invalid_reason"] == reason
    assert diagnostics["final_position"] == final
    assert diagnostics["reached_goal"] is reached
    assert diagnostics["is_shortest"] is shortest
    assert diagnostics["expected_length"] == 4
    assert diagnostics["expected"] == "down down right right"


def test_longer_valid_path_gets_reasoning_gyms_half_credit_but_is_wrong(generator):
    verdict = get_verifier("maze").verify(
        grid_task(CORRIDOR, generator), "down down right left right right"
    )
    assert verdict.diagnostics["score"] == 0.5
    assert verdict.diagnostics["got_moves"] == ["down", "down", "right", "left", "right", "right"]
    assert not verdict.correct


def test_empty_reply(generator):
    verdict = get_verifier("maze").verify(grid_task(CORRIDOR, generator), "   ")
    assert not verdict.correct
    assert verdict.extracted is None
    assert verdict.diagnostics["got"] is None
    assert verdict.diagnostics["final_position"] == [0, 0]


def test_walled_in_start(generator):
    task = grid_task(WALLED_IN, generator)
    assert task.answer == "infeasible"
    for reply in ("infeasible", "Answer: Infeasible.", "\\boxed{infeasible}"):
        verdict = get_verifier("maze").verify(task, reply)
        assert verdict.correct, verdict
        assert verdict.diagnostics["feasible"] is False
    verdict = get_verifier("maze").verify(task, "down")
    assert not verdict.correct
    assert verdict.diagnostics["invalid_reason"] == "blocked"


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"dataset": "mini_sudoku", "entry": {"answer": "up"}}, "maze verifier reads"),
        (
            {
                "dataset": "shortest_path",
                "entry": {"answer": "up", "metadata": {"matrix": [["*", "*"], ["O", "#"]]}},
            },
            "2 '\\*' cells",
        ),
        (
            {
                "dataset": "shortest_path",
                "entry": {"answer": "up", "metadata": {"matrix": [["*", "O"], ["#"]]}},
            },
            "different lengths",
        ),
        (
            {
                "dataset": "shortest_path",
                "entry": {"answer": "up", "metadata": {"matrix": [["*", "Q"], ["O", "#"]]}},
            },
            "not one of",
        ),
        (
            {
                "dataset": "shortest_path",
                "entry": {"answer": "right", "metadata": {"matrix": [["*", "O"], ["O", "#"]]}},
            },
            "not a shortest path",
        ),
    ],
)
def test_bad_task_config_is_a_data_error_naming_the_task(config, message):
    task = Task(
        domain="maze",
        source="test",
        prompt="?",
        answer="up",
        verifier="maze",
        verifier_config=config,
    )
    with pytest.raises(DataError, match=message) as raised:
        get_verifier("maze").verify(task, "up")
    assert task.id in str(raised.value)
