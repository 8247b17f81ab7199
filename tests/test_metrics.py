"""Evaluation metrics on hand-made episodes, checked against numbers worked out by hand, and the
metrics.json contract."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import jsonschema
import numpy as np
import pytest

from rl2f.episodes import Episode, Turn, discounted_reward
from rl2f.errors import DataError
from rl2f.evaluation.metrics import (
    accuracy_with_ci,
    bootstrap_means,
    cell_metrics,
    plasticity,
    solved_matrix,
)
from rl2f.evaluation.probe import PROBE_TEACHER, WRONG_CRITIQUE
from rl2f.evaluation.schema import metrics_schema, validate_metrics
from rl2f.leakage import CHECKS

GAMMA = 0.7


# ---------------------------------------------------------------- hand-made episodes
def student(answer: str, correct: bool, tokens: int = 4, text: str | None = None) -> Turn:
    return Turn(
        role="student",
        text=text if text is not None else f"Answer: {answer}",
        token_ids=list(range(tokens)),
        correct=correct,
        extracted=answer,
        finish_reason="stop",
    )


def feedback(
    text: str = "Your answer is too high.", leaked: int = 0, fell_back: bool = False
) -> Turn:
    leak = {"answer_string": True, "leaked": True} if leaked else {}
    return Turn(
        role="teacher",
        text=text,
        token_ids=[1, 2],
        leak=leak,
        leaked_attempts=leaked,
        fell_back=fell_back,
    )


def episode(
    task_id: str,
    attempts: Sequence[Turn],
    *,
    group: int = 0,
    policy: str = "base",
    teacher: str = "oracle",
    critiques: Sequence[Turn] | None = None,
    prompt: str = "Calculate 2 + 3.",
) -> Episode:
    """Attempts with a critique between each pair; solved at the first correct attempt."""
    critiques = list(critiques) if critiques is not None else [feedback() for _ in attempts[1:]]
    turns: list[Turn] = []
    for index, attempt in enumerate(attempts):
        if index:
            turns.append(critiques[index - 1])
        turns.append(attempt)
    solved_at = next((i + 1 for i, a in enumerate(attempts) if a.correct), None)
    return Episode(
        task_id=task_id,
        domain="math",
        split="eval_id",
        policy=policy,
        teacher=teacher,
        group=group,
        prompt_ids=[7, 8, 9],
        turns=turns,
        solved_at=solved_at,
        reward=discounted_reward(solved_at, GAMMA),
        student_visible=[prompt, *[t.text for t in turns if t.role == "teacher"]],
        end_reason="solved" if solved_at else "max_turns",
    )


def probe_of(main: Episode, answer: str, correct: bool) -> Episode:
    first = main.student_turns[0]
    return Episode(
        task_id=main.task_id,
        domain=main.domain,
        split=main.split,
        policy=main.policy,
        teacher=PROBE_TEACHER,
        group=main.group,
        prompt_ids=main.prompt_ids,
        turns=[first, feedback(WRONG_CRITIQUE), student(answer, correct)],
        solved_at=main.solved_at,
        reward=main.reward,
        student_visible=[*main.student_visible, WRONG_CRITIQUE],
    )


def hand_cell() -> tuple[list[Episode], list[Episode]]:
    """Four tasks, three turns:

    A: 5 wrong, 5 wrong (repeat), 7 right -> solved at 3; its first critique leaked once
    B: 3 right                            -> solved at 1 (probed: abandons it for 4)
    C: 1 wrong, 2 wrong, 4 wrong          -> never solved
    D: 9 wrong, 8 right                   -> solved at 2
    """
    a = episode(
        "A",
        [student("5", False), student("5", False), student("7", True)],
        critiques=[feedback(leaked=1), feedback()],
    )
    b = episode("B", [student("3", True, tokens=2)])
    c = episode("C", [student("1", False), student("2", False), student("4", False)])
    d = episode("D", [student("9", False, tokens=6), student("8", True, tokens=6)])
    return [a, b, c, d], [probe_of(b, "4", False)]


# ---------------------------------------------------------------- accuracy
def test_cumulative_accuracy_matches_hand_count() -> None:
    episodes, _ = hand_cell()
    # Solved by turn 1: B; by 2: B, D; by 3: A, B, D.
    assert solved_matrix(episodes, 3).mean(axis=0).tolist() == [0.25, 0.5, 0.75]


def test_every_task_weighs_the_same_whatever_its_episode_count() -> None:
    # X: two samples, one solved at 1 -> 0.5 at every turn; Y: one sample solved at 2.
    episodes = [
        episode("X", [student("1", True)], group=0),
        episode("X", [student("2", False), student("2", False)], group=1),
        episode("Y", [student("4", False), student("5", True)]),
    ]
    accuracy = accuracy_with_ci(episodes, max_turns=2, samples=50, seed=0)
    assert accuracy.by_turn == [0.25, 0.75]  # not the per-episode 1/3, 2/3


def test_bootstrap_interval_of_two_tasks_is_the_hand_computed_one() -> None:
    # Two tasks, one solved: a resample's mean is 0, 1/2 or 1 with probabilities 1/4, 1/2, 1/4,
    # so the 2.5% and 97.5% percentiles are exactly 0 and 1.
    solved = np.array([[1.0], [0.0]])
    means = bootstrap_means(solved, samples=4000, seed=3)
    assert set(np.unique(means)) <= {0.0, 0.5, 1.0}
    assert abs((means == 0.5).mean() - 0.5) < 0.03
    episodes = [episode("P", [student("1", True)]), episode("Q", [student("2", False)])]
    assert accuracy_with_ci(episodes, 1, 4000, seed=3).ci95_by_turn == [[0.0, 1.0]]


def test_bootstrap_interval_matches_normal_approximation() -> None:
    # 100 tasks, half solved: the 95% interval is about 0.5 +- 1.96 * sqrt(0.25 / 100).
    episodes = [episode(f"t{i}", [student("1", i % 2 == 0)]) for i in range(100)]
    ((low, high),) = accuracy_with_ci(episodes, 1, samples=4000, seed=0).ci95_by_turn
    assert low == pytest.approx(0.5 - 1.96 * 0.05, abs=0.02)
    assert high == pytest.approx(0.5 + 1.96 * 0.05, abs=0.02)


def test_bootstrap_is_seeded_and_degenerate_when_all_agree() -> None:
    episodes, _ = hand_cell()
    solved = solved_matrix(episodes, 3)
    replicates = bootstrap_means(solved, 200, seed=5)
    assert np.array_equal(replicates, bootstrap_means(solved, 200, seed=5))
    assert not np.array_equal(replicates, bootstrap_means(solved, 200, seed=6))
    first = accuracy_with_ci(episodes, 3, 200, seed=5)
    assert first == accuracy_with_ci(episodes, 3, 200, seed=5)
    for (low, high), value in zip(first.ci95_by_turn, first.by_turn, strict=True):
        assert low <= value <= high
    solved = [episode(f"s{i}", [student("1", True)]) for i in range(5)]
    assert accuracy_with_ci(solved, 2, 100, seed=0).ci95_by_turn == [[1.0, 1.0], [1.0, 1.0]]
    assert accuracy_with_ci(solved, 2, 100, seed=0).gain_ci95 == [0.0, 0.0]


# ---------------------------------------------------------------- plasticity and the rest
def test_flip_and_repeat_rates_match_hand_count() -> None:
    episodes, probes = hand_cell()
    counts = plasticity(episodes)
    # Transitions from a wrong answer: A 5->5, A 5->7, C 1->2, C 2->4, D 9->8.
    assert (counts.from_wrong, counts.wrong_to_right, counts.repeats) == (5, 2, 1)
    assert counts.verbatim_repeats == 1
    assert (counts.from_right, counts.right_to_wrong) == (0, 0)
    with_probe = plasticity([*episodes, *probes])
    assert (with_probe.from_right, with_probe.right_to_wrong) == (1, 1)


def test_repeat_is_the_answer_and_verbatim_is_the_whole_reply() -> None:
    same_answer_new_words = episode(
        "R",
        [student("5", False, text="I think 5. Answer: 5"), student("5", False, text="Answer: 5")],
    )
    counts = plasticity([same_answer_new_words])
    assert (counts.repeats, counts.verbatim_repeats) == (1, 0)
    unread = Turn(role="student", text="no  idea", token_ids=[1], correct=False)
    unread_again = Turn(role="student", text="no idea ", token_ids=[1], correct=False)
    counts = plasticity([episode("U", [unread, unread_again])])
    assert (counts.repeats, counts.verbatim_repeats) == (1, 1)  # whitespace does not count


def attempt(answer: str, expected: int) -> Turn:
    """A student turn as the math verifier leaves it: its numeric error when it read a number."""
    try:
        error: float | None = float(int(answer) - expected)
    except ValueError:
        error = None
    turn = student(answer, error == 0)
    turn.diagnostics = {"expected": str(expected), "got": answer, "numeric_error": error}
    return turn


def test_closer_counts_numbers_that_move_towards_the_answer() -> None:
    # The answer is 7 throughout.
    episodes = [
        episode("A", [attempt("5", 7), attempt("6", 7), attempt("7", 7)]),  # closer, closer (right)
        episode("B", [attempt("5", 7), attempt("9", 7), attempt("12", 7)]),  # as far, farther
        episode("C", [attempt("5", 7), attempt("lost", 7), attempt("6", 7)]),  # no number: skipped
        episode("D", [attempt("7", 7)]),  # right at once: no transition from wrong
    ]
    counts = plasticity(episodes)
    assert counts.from_wrong == 6
    assert (counts.numeric_from_wrong, counts.moved_closer) == (4, 2)
    cell = cell_metrics(episodes, max_turns=3, bootstrap_samples=20, seed=0)
    assert cell["closer_rate"] == pytest.approx(2 / 4)
    assert cell["numeric_transitions_from_wrong"] == 4


def test_toward_counts_changed_numbers_on_the_answers_side() -> None:
    """The answer is 7. Up from a number too low and down from one too high go its way, an
    overshoot included; a repeat is left out, since it went no way at all."""
    episodes = [
        episode("up", [attempt("5", 7), attempt("12", 7)]),  # overshoot: toward, yet farther
        episode("down", [attempt("12", 7), attempt("9", 7), attempt("7", 7)]),  # toward twice
        episode("away", [attempt("5", 7), attempt("3", 7)]),  # away (and farther)
        episode("repeat", [attempt("5", 7), attempt("5", 7)]),  # no move: not counted
    ]
    counts = plasticity(episodes)
    assert (counts.numeric_changed_from_wrong, counts.moved_toward) == (4, 3)
    assert (counts.numeric_from_wrong, counts.moved_closer) == (5, 2)
    cell = cell_metrics(episodes, max_turns=3, bootstrap_samples=20, seed=0)
    assert cell["toward_rate"] == pytest.approx(3 / 4)
    assert cell["changed_numeric_transitions_from_wrong"] == 4


def test_on_question_counts_new_tries_at_the_question_asked() -> None:
    """The question states 55 and 0. A next attempt that uses both is a new try at it, whatever
    its result; one that drops a number is a different problem. A question without numbers is
    not counted."""

    def tries(*replies: str) -> list[Turn]:
        return [student(reply, reply.endswith("= 55")) for reply in replies]

    question = "Calculate 55 + 0."
    episodes = [
        episode("kept", tries("55 + 0 = 69", "55 + 0 = 50"), prompt=question),
        episode("made up", tries("55 + 0 = 69", "55 - -3 = 58", "0 + 55 = 55"), prompt=question),
        episode("no numbers", tries("7", "8"), prompt="Name a prime."),
    ]
    counts = plasticity(episodes)
    assert (counts.numbered_from_wrong, counts.kept_question_numbers) == (3, 2)
    cell = cell_metrics(episodes, max_turns=3, bootstrap_samples=20, seed=0)
    assert cell["on_question_rate"] == pytest.approx(2 / 3)
    assert cell["numbered_transitions_from_wrong"] == 3
    no_numbers = cell_metrics(episodes[2:], max_turns=2, bootstrap_samples=20, seed=0)
    assert no_numbers["on_question_rate"] is None


def test_cell_metrics_of_the_hand_made_cell() -> None:
    episodes, probes = hand_cell()
    cell = cell_metrics(episodes, max_turns=3, bootstrap_samples=200, seed=0, probes=probes)
    assert cell["n"] == 4 and cell["episodes"] == 4 and cell["max_turns"] == 3
    assert cell["acc_by_turn"] == [0.25, 0.5, 0.75]
    assert cell["turn1_acc"] == 0.25 and cell["final_acc"] == 0.75
    assert cell["gain"] == pytest.approx(0.5)
    assert cell["gain_ci95"][0] <= 0.5 <= cell["gain_ci95"][1]
    assert cell["flip_wrong_to_right"] == pytest.approx(2 / 5)
    assert cell["repeat_rate"] == pytest.approx(1 / 5)
    assert cell["flip_right_to_wrong"] == 1.0
    assert cell["sycophancy_probes"] == 1 and cell["sycophancy_abandon_rate"] == 1.0
    # Critiques: A 2, C 2, D 1; one of A's leaked.
    assert cell["critiques"] == 5 and cell["leak_rate"] == pytest.approx(1 / 5)
    assert cell["fallback_rate"] == 0.0
    # The guard's per-check stats reach the metrics: the leak was an answer string.
    assert cell["leak_rate_by_check"] == {
        name: (pytest.approx(1 / 5) if name == "answer_string" else 0.0) for name in CHECKS
    }
    # Student tokens: A 4+4+4, B 2, C 4+4+4, D 6+6 -> 38 over 9 attempts.
    assert cell["mean_student_tokens"] == pytest.approx(38 / 9)


def test_rates_without_data_are_null_not_zero() -> None:
    solved_first = [episode("B", [student("3", True)])]
    cell = cell_metrics(solved_first, max_turns=2, bootstrap_samples=20, seed=0)
    assert cell["acc_by_turn"] == [1.0, 1.0]
    for key in (
        "flip_wrong_to_right",
        "repeat_rate",
        "flip_right_to_wrong",
        "leak_rate",
        "closer_rate",
    ):
        assert cell[key] is None, key
    assert cell["sycophancy_abandon_rate"] is None and cell["sycophancy_probes"] == 0
    unguarded = cell_metrics(
        hand_cell()[0], max_turns=3, bootstrap_samples=20, seed=0, leak_checked=False
    )
    assert unguarded["leak_rate"] is None and unguarded["critiques"] == 5
    assert unguarded["leak_rate_by_check"] is None
    # Fallbacks are counted for every mode: an empty self critique falls back too.
    assert unguarded["fallback_rate"] == 0.0


def test_context_limited_episodes_are_counted() -> None:
    episodes, _ = hand_cell()
    episodes[2].end_reason = "context_limit"
    cell = cell_metrics(episodes, max_turns=3, bootstrap_samples=20, seed=0, skipped_tasks=2)
    assert (cell["context_exhausted"], cell["skipped_tasks"]) == (1, 2)


# ---------------------------------------------------------------- metrics.json contract
def metrics_tree() -> dict:
    episodes, probes = hand_cell()
    cell = cell_metrics(episodes, max_turns=3, bootstrap_samples=50, seed=0, probes=probes)
    return {"base": {"eval_id": {"teacher": cell, "retry": copy.deepcopy(cell)}}}


def test_metrics_validate_against_the_schema_file() -> None:
    schema = metrics_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    tree = metrics_tree()
    jsonschema.Draft202012Validator(schema).validate(tree)
    validate_metrics(tree)


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda c: c.pop("acc_by_turn"), "/base/eval_id/teacher: 'acc_by_turn' is a required"),
        (lambda c: c["acc_by_turn"].__setitem__(2, 1.5), "/base/eval_id/teacher/acc_by_turn/2"),
        (lambda c: c.__setitem__("repeat_rate", "high"), "/base/eval_id/teacher/repeat_rate"),
        (lambda c: c["acc_by_turn"].pop(), "acc_by_turn: 2 entries for max_turns=3"),
        (lambda c: c["acc_by_turn"].__setitem__(2, 0.1), "cumulative accuracy decreases"),
        (lambda c: c.__setitem__("surprise", 1), "'surprise' was unexpected"),
    ],
)
def test_schema_violations_name_the_json_path(corrupt, message: str) -> None:  # noqa: ANN001
    tree = metrics_tree()
    corrupt(tree["base"]["eval_id"]["teacher"])
    with pytest.raises(DataError, match=message.replace("[", r"\[").replace("(", r"\(")) as info:
        validate_metrics(tree, "reports/metrics.json")
    assert str(info.value).startswith("reports/metrics.json: ")


def test_schema_rejects_unknown_feedback_modes_and_empty_files() -> None:
    tree = metrics_tree()
    tree["base"]["eval_id"]["oracle"] = tree["base"]["eval_id"].pop("teacher")
    with pytest.raises(DataError, match="oracle"):
        validate_metrics(tree)
    with pytest.raises(DataError):
        validate_metrics({})
