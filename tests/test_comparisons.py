"""Paired differences between evaluation cells: hand-made episodes with known answers, the
comparisons.json row format, the Kubeflow report path, and common random numbers in a real
G=2 evaluation of the tiny model."""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from test_metrics import attempt, episode, student
from test_report import MODELS, write_evaluation

from rl2f.config import EngineConfig, SamplingConfig
from rl2f.engines import make_engine
from rl2f.episodes import Episode
from rl2f.evaluation.comparisons import (
    DEFAULT_PAIRS,
    comparison_rows,
    default_pairs,
    excludes_zero,
    feedback_use_rows,
    paired_difference,
)
from rl2f.evaluation.episode_files import read_model_cells, write_cell
from rl2f.evaluation.metrics import accuracy_with_ci, cell_metrics
from rl2f.evaluation.runner import EvalSplit, evaluate_model
from rl2f.rollout import RolloutSettings
from rl2f.tasks.schema import Task
from rl2f.teachers.retry import RetryTeacher

REPO = Path(__file__).resolve().parents[1]
ROW_KEYS = {"split", "turn", "a", "b", "diff", "ci95", "n"}


def solved_by(task_id: str, turn: int | None, turns: int = 3, group: int = 0) -> Episode:
    """An episode solved at ``turn`` (None: wrong at every one of ``turns``)."""
    last = turn or turns
    attempts = [student(str(t), correct=t == turn) for t in range(1, last + 1)]
    return episode(task_id, attempts, group=group)


# ---------------------------------------------------------------- the difference
def test_pairing_resolves_a_gap_that_per_model_intervals_cannot() -> None:
    """b solves tasks 0-19 at turn 1; a solves the same tasks and six more (at turn 2). The
    per-model intervals overlap, but every per-task difference is >= 0, so the paired interval
    lies above 0 at turn 2 and is exactly 0 at turn 1."""
    a = [solved_by(f"t{i}", 1 if i < 20 else 2 if i < 26 else None) for i in range(40)]
    b = [solved_by(f"t{i}", 1 if i < 20 else None) for i in range(40)]
    random.Random(0).shuffle(b)  # file order must not matter: pairing is by task id

    paired = paired_difference(a, b, max_turns=3, samples=2000, seed=0)
    assert paired.tasks == 40
    assert paired.diff_by_turn == pytest.approx([0.0, 0.15, 0.15])
    assert paired.ci95_by_turn[0] == [0.0, 0.0]
    assert paired.ci95_by_turn[-1][0] > 0 and excludes_zero(paired.ci95_by_turn[-1])

    low_a, _ = accuracy_with_ci(a, 3, 2000, 0).ci95_by_turn[-1]
    _, high_b = accuracy_with_ci(b, 3, 2000, 0).ci95_by_turn[-1]
    assert low_a < high_b, "the unpaired intervals should overlap for this test to mean anything"

    reversed_pair = paired_difference(b, a, max_turns=3, samples=2000, seed=0)
    assert reversed_pair.diff_by_turn[-1] == pytest.approx(-0.15)
    assert reversed_pair.ci95_by_turn[-1][1] < 0


def test_identical_cells_differ_by_exactly_zero() -> None:
    cell = [solved_by(f"t{i}", [1, 2, None][i % 3]) for i in range(12)]
    paired = paired_difference(cell, list(reversed(cell)), max_turns=3, samples=500, seed=3)
    assert paired.diff_by_turn == [0.0, 0.0, 0.0]
    assert paired.ci95_by_turn == [[0.0, 0.0]] * 3
    assert not excludes_zero(paired.ci95_by_turn[-1])


def test_pairing_uses_only_the_tasks_both_cells_hold() -> None:
    shared = [solved_by(f"t{i}", [1, None][i % 2]) for i in range(6)]
    # a also holds a task it solved and b one it missed; both would move the difference.
    a = [*shared, solved_by("only-a", 1)]
    b = [solved_by("only-b", None), *shared]
    paired = paired_difference(a, b, max_turns=3, samples=200, seed=0)
    assert paired.tasks == 6
    assert paired.diff_by_turn == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="share no task"):
        paired_difference([solved_by("x", 1)], [solved_by("y", 1)], 3, 100, 0)


def test_a_task_counts_as_the_share_of_its_generations_solved() -> None:
    """G=2: task A is solved by one generation at turn 1 and the other at turn 2 under a, never
    under b; task B is solved at turn 1 by both generations in both cells."""
    a = [
        solved_by("A", 1, group=0),
        solved_by("A", 2, group=1),
        solved_by("B", 1, group=0),
        solved_by("B", 1, group=1),
    ]
    b = [
        solved_by("A", None, group=0),
        solved_by("A", None, group=1),
        solved_by("B", 1, group=0),
        solved_by("B", 1, group=1),
    ]
    paired = paired_difference(a, b, max_turns=3, samples=200, seed=0)
    assert paired.tasks == 2
    assert paired.diff_by_turn == pytest.approx([0.25, 0.5, 0.5])


# ---------------------------------------------------------------- rows
def test_rows_cover_the_default_pairs_at_every_turn_in_the_documented_format() -> None:
    def cell(skill: float, split: str, count: int = 10) -> list[Episode]:
        rng = random.Random(f"{skill}/{split}")
        return [
            solved_by(f"{split}-{i}", 1 if rng.random() < skill else None, turns=2)
            for i in range(count)
        ]

    cells = {
        (model, split, mode): cell(skill, split)
        for split in ("eval_id", "ood_maze")
        for model, skill in (("base", 0.2), ("single_turn", 0.3), ("rl2f", 0.6))
        for mode in ("teacher", "retry")
    }
    cells[("rl2f_critic", "eval_id", "self")] = cell(0.5, "eval_id")
    cells[("ablation", "eval_id", "self")] = cell(0.4, "eval_id")
    rows = comparison_rows(cells, samples=100, seed=0, max_turns={"eval_id": 2})

    for row in rows:
        assert set(row) == ROW_KEYS
        assert set(row["a"]) == {"model", "mode"} and set(row["b"]) == {"model", "mode"}
        assert isinstance(row["diff"], float) and isinstance(row["n"], int)
        low, high = row["ci95"]
        assert isinstance(low, float) and low <= row["diff"] <= high
    json.dumps(rows)  # plain JSON types only

    def pairs(split: str) -> list[tuple[tuple[str, str], tuple[str, str]]]:
        return list(
            dict.fromkeys(
                ((r["a"]["model"], r["a"]["mode"]), (r["b"]["model"], r["b"]["mode"]))
                for r in rows
                if r["split"] == split
            )
        )

    # Only the pairs whose two cells exist; the extra model against the critic in self mode.
    assert pairs("eval_id") == [*DEFAULT_PAIRS[:5], (("ablation", "self"), ("rl2f_critic", "self"))]
    assert pairs("ood_maze") == list(DEFAULT_PAIRS[:5])
    for split in ("eval_id", "ood_maze"):
        for pair in pairs(split):
            turns = [
                r["turn"]
                for r in rows
                if r["split"] == split
                and (r["a"]["model"], r["a"]["mode"]) == pair[0]
                and (r["b"]["model"], r["b"]["mode"]) == pair[1]
            ]
            assert turns == [1, 2]  # inferred for ood_maze: every unsolved episode took 2 turns

    first = rows[0]
    expected = paired_difference(
        cells[("rl2f", "eval_id", "teacher")], cells[("base", "eval_id", "teacher")], 2, 100, 0
    )
    assert first == {
        "split": "eval_id",
        "turn": 1,
        "a": {"model": "rl2f", "mode": "teacher"},
        "b": {"model": "base", "mode": "teacher"},
        "diff": expected.diff_by_turn[0],
        "ci95": expected.ci95_by_turn[0],
        "n": 10,
    }


def test_default_pairs_cover_the_issue_and_add_extra_models() -> None:
    pairs = default_pairs(["base", "single_turn", "rl2f", "rl2f_critic"])
    rl2f_teacher = ("rl2f", "teacher")
    for other in (("base", "teacher"), ("single_turn", "teacher"), ("rl2f", "retry")):
        assert (rl2f_teacher, other) in pairs
    assert pairs == list(DEFAULT_PAIRS)
    extra = ("rl2f_critic_no_student_turns", "self")
    assert default_pairs(["rl2f", extra[0]])[-1] == (extra, ("rl2f_critic", "self"))


# ---------------------------------------------------------------- Kubeflow's report step
# ---------------------------------------------------------------- following the feedback
def revisions(task_id: str, answers: Sequence[str]) -> Episode:
    """Wrong numbers until the last (the answer is 7), as the math verifier leaves them."""
    return episode(task_id, [attempt(answer, 7) for answer in answers])


def test_feedback_use_is_the_toward_rate_gap_and_its_excess_over_the_base() -> None:
    """Twenty identical tasks, so every bootstrap replicate is the whole cell and the intervals
    are the point. The answer is 7: base moves its way once in two after a critique
    (3 -> 5 -> 1) and never after a retry (3 -> 1); rl2f at every critique (3 -> 5 -> 6)."""
    tasks = [f"t{i}" for i in range(20)]
    cells = {
        ("base", "eval_id", "teacher"): [revisions(t, ["3", "5", "1"]) for t in tasks],
        ("base", "eval_id", "retry"): [revisions(t, ["3", "1"]) for t in tasks],
        ("rl2f", "eval_id", "teacher"): [revisions(t, ["3", "5", "6"]) for t in tasks],
        ("rl2f", "eval_id", "retry"): [revisions(t, ["3", "1"]) for t in tasks],
        ("rl2f_critic", "eval_id", "self"): [revisions(t, ["3", "5"]) for t in tasks],  # no retry
    }
    rows = {row["model"]: row for row in feedback_use_rows(cells, samples=200, seed=0)}
    assert set(rows) == {"base", "rl2f"}
    base, rl2f = rows["base"], rows["rl2f"]
    assert (base["critique"], base["retry"], base["diff"]) == (0.5, 0.0, 0.5)
    assert base["ci95"] == pytest.approx([0.5, 0.5]) and base["minus_base"] is None
    assert (rl2f["critique"], rl2f["retry"], rl2f["diff"]) == (1.0, 0.0, 1.0)
    assert rl2f["minus_base"]["diff"] == pytest.approx(0.5)
    assert rl2f["minus_base"]["ci95"] == pytest.approx([0.5, 0.5])
    assert rl2f["n"] == 20 and rl2f["split"] == "eval_id"


def test_feedback_use_does_not_count_what_only_stops_repeats() -> None:
    """After a retry this model repeats half its wrong numbers; after a critique it never does,
    but it moves no more often the answer's way. The closer rate credits the critique (a repeat
    is never closer); the toward rate, which leaves repeats out, shows no gap."""
    tasks = [f"t{i}" for i in range(10)]
    moves = {"teacher": ["6", "1", "6", "1"], "retry": ["3", "3", "6", "1"]}
    cells = {
        ("rl2f", "eval_id", mode): [
            revisions(t, ["3", second]) for t in tasks for second in seconds
        ]
        for mode, seconds in moves.items()
    }
    closer = {mode: cell_metrics(e, max_turns=2, bootstrap_samples=10, seed=0)["closer_rate"]
              for (_, _, mode), e in cells.items()}  # fmt: skip
    assert closer == {"teacher": 0.5, "retry": 0.25}
    (row,) = feedback_use_rows(cells, samples=100, seed=0)
    assert (row["critique"], row["retry"], row["diff"]) == (0.5, 0.5, 0.0)


def test_feedback_use_interval_is_paired_and_skips_splits_without_numbers() -> None:
    """Tasks differ in how often a model moves the answer's way (easy ones 3 of 3 after a
    critique, hard ones 2 of 3), but on every task the critique beats the retry by one
    transition in three. Paired, the gap is exactly 1/3 in every replicate; the per-mode rates
    themselves vary with the mix of easy and hard tasks drawn. Replies that are not numbers (a
    maze) give no row."""
    rng = random.Random(0)
    critique, retry = [], []
    for i in range(60):
        easy = rng.random() < 0.5
        critique.append(revisions(f"t{i}", ["3", "5", "6" if easy else "1", "7"]))
        retry.append(revisions(f"t{i}", ["3", "5" if easy else "1", "1" if easy else "0", "7"]))
    words = [episode(f"m{i}", [student("left", False), student("up", False)]) for i in range(5)]
    cells = {
        ("rl2f", "eval_id", "teacher"): critique,
        ("rl2f", "eval_id", "retry"): retry,
        ("rl2f", "ood_maze", "teacher"): words,
        ("rl2f", "ood_maze", "retry"): words,
    }
    (row,) = feedback_use_rows(cells, samples=500, seed=0)
    assert row["split"] == "eval_id"
    assert row["diff"] == pytest.approx(1 / 3)
    assert row["ci95"] == pytest.approx([1 / 3, 1 / 3])
    assert 2 / 3 < row["critique"] < 1 and 1 / 3 < row["retry"] < 2 / 3


def test_feedback_use_skips_cells_that_share_no_task() -> None:
    cells = {
        ("rl2f", "eval_id", "teacher"): [revisions("a", ["3", "5"])],
        ("rl2f", "eval_id", "retry"): [revisions("b", ["3", "5"])],
    }
    assert feedback_use_rows(cells, samples=50, seed=0) == []


def test_kubeflow_report_merges_models_and_outputs_comparisons(tmp_path: Path) -> None:
    """The report component's body: per-model result directories, as the fanned-out evaluate
    tasks write them, merged and reported by the real `rl2f report` in a subprocess; the
    comparisons reach their output artifact and its scalar metrics."""
    from kfp.dsl import Metrics

    from rl2f.pipeline_io import merge_and_report, publish_comparisons

    whole = tmp_path / "whole"
    write_evaluation(whole)
    result_dirs = []
    for model in MODELS:
        result = tmp_path / "results" / model
        shutil.copytree(whole / "data/episodes/eval" / model, result / "data/episodes/eval" / model)
        metrics = json.loads((whole / "reports/metrics.json").read_text())
        (result / "reports/plots").mkdir(parents=True)
        (result / "reports/plots/eval_id.csv").write_text(
            f"model,split,mode,turn,acc,lo,hi\n{model},eval_id,teacher,1,0.5,0.4,0.6\n"
        )
        (result / "reports/metrics.json").write_text(json.dumps({model: metrics[model]}))
        result_dirs.append(str(result))

    out = tmp_path / "artifacts"
    # The red team task's output artifact, as the report task receives it.
    leaks = tmp_path / "results" / "leaks"
    leaks.write_text(json.dumps({"eval_id": {"teacher": {
        "tasks": 3, "critiques": 9.0, "attempted": 0.0, "delivered": 0.0,
        "leak_rate_by_check": {"answer_string": 0.0},
    }}}))  # fmt: skip
    params = (REPO / "params.yaml").read_text()
    merge_and_report(
        params,
        ["tracking.enabled=false", "eval.bootstrap_samples=100"],
        result_dirs,
        red_team_leaks=str(leaks),
        html=str(out / "html"),
        markdown=str(out / "markdown"),
        metrics_json=str(out / "metrics"),
        comparisons_json=str(out / "comparisons"),
    )
    rows = json.loads((out / "comparisons").read_text())
    assert {(r["a"]["model"], r["b"]["model"]) for r in rows} >= {
        ("rl2f", "base"),
        ("rl2f", "single_turn"),
        ("rl2f", "rl2f"),
    }
    page = (out / "html").read_text()
    assert "Paired differences" in page
    assert 'id="attacks"' in page and 'id="no-attacks"' not in page

    artifact = Metrics(uri=str(out / "comparisons"))
    publish_comparisons(artifact)
    key = "eval_id.rl2f.teacher-base.teacher.turn3"
    pair = {"a": {"model": "rl2f", "mode": "teacher"}, "b": {"model": "base", "mode": "teacher"}}
    (last,) = [
        r for r in rows if r["split"] == "eval_id" and r["turn"] == 3 and pair.items() <= r.items()
    ]
    assert artifact.metadata[f"{key}.diff"] == last["diff"]
    assert [artifact.metadata[f"{key}.lo"], artifact.metadata[f"{key}.hi"]] == last["ci95"]
    # Turn 1 and each split's last turn only (eval_id has 3 turns, ood_maze 2).
    assert not any(n.startswith("eval_id.") and ".turn2." in n for n in artifact.metadata)
    assert any(n.startswith("ood_maze.") and ".turn2." in n for n in artifact.metadata)


# ---------------------------------------------------------------- common random numbers
def sums(count: int) -> list[Task]:
    """Sums the untrained tiny model does not answer: every episode runs to the last turn."""
    return [
        Task(
            domain="math",
            source="test",
            prompt=f"Calculate {900 + i} + {i + 1}.\nGive your final answer after 'Answer:'.",
            answer=str(901 + 2 * i),
            verifier="math",
            split="eval_id",
        )
        for i in range(count)
    ]


def perturbed_copy(model_dir: Path, target: Path, scale: float) -> Path:
    """The same architecture and tokenizer with every weight nudged: another model, whose
    next-token distributions are close to the original's."""
    from transformers import AutoModelForCausalLM

    shutil.copytree(model_dir, target)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator))
    model.save_pretrained(target)
    return target


def test_g2_evaluation_shares_random_numbers_across_models(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """eval.num_generations=2 end to end through the evaluation loop and the episode files:
    the two generations of a task draw different samples, and a (task, generation) draws the
    same random numbers under two different models, so close models answer alike at turn 1."""
    other_dir = perturbed_copy(tiny_model_dir, tmp_path / "other", scale=1e-4)
    split = EvalSplit("eval_id", sums(3), max_turns=2)
    rollout = RolloutSettings(
        sampling=SamplingConfig(max_new_tokens=8, seed=1234),
        num_generations=2,
        max_turns=2,
        gamma=0.7,
        max_regenerations=1,
        fallback_message="Try again.",
        progress=False,
    )

    def evaluate(name: str, model_dir: Path, rollout: RolloutSettings = rollout) -> list[Episode]:
        engine = make_engine(EngineConfig(batch_size=4), str(model_dir))
        try:
            (cell,) = evaluate_model(
                name,
                engine,
                [split],
                ["retry"],
                lambda mode, student: RetryTeacher("Try again."),
                rollout,
                sycophancy_probe=False,
            )
        finally:
            engine.close()
        write_cell(tmp_path / "episodes", name, cell.split, cell.mode, cell.episodes, [])
        (stored,) = read_model_cells(tmp_path / "episodes", name)
        return stored.episodes

    base, other = evaluate("base", tiny_model_dir), evaluate("other", other_dir)
    assert len(base) == len(other) == 3 * 2

    def first_tokens(episodes: list[Episode]) -> dict[tuple[str, int], list[int]]:
        return {(e.task_id, e.group): e.student_turns[0].token_ids for e in episodes}

    tokens, other_tokens = first_tokens(base), first_tokens(other)
    assert sorted(tokens) == sorted((t.id, g) for t in split.tasks for g in (0, 1))
    for task in split.tasks:
        assert tokens[(task.id, 0)] != tokens[(task.id, 1)]  # G samples, not G copies
    assert other_tokens == tokens  # common random numbers: the same draws under both models
    assert base[0].student_turns[0].logprobs != other[0].student_turns[0].logprobs  # 2 models

    reseeded = replace(rollout, sampling=SamplingConfig(max_new_tokens=8, seed=7))
    assert first_tokens(evaluate("base", tiny_model_dir, reseeded)) != tokens

    rows = comparison_rows(
        {("other", "eval_id", "retry"): other, ("base", "eval_id", "retry"): base},
        samples=100,
        seed=0,
        pairs=[(("other", "retry"), ("base", "retry"))],
    )
    assert [(r["turn"], r["n"], r["diff"]) for r in rows] == [(1, 3, 0.0), (2, 3, 0.0)]
