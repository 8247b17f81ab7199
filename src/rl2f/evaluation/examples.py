"""Which evaluation episodes the report shows as conversations, and why.

The headline example is the paper's story in one task: the untrained model repeats its wrong
answer after feedback, while RL2F, on the same task with the same feedback mode, fixes it. It is
searched for in the real evaluation episodes; when none exists the report says so rather than
showing a made-up one. The other examples each show one mechanism at work: the leak guard, the
sycophancy probe, self-critique.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from rl2f.episodes import Episode
from rl2f.evaluation.episode_files import StoredCell
from rl2f.evaluation.metrics import abandoned, is_repeat

UNTRAINED, TRAINED = "base", "rl2f"


@dataclass(frozen=True)
class Example:
    title: str
    why: str  # one sentence: what this episode shows
    model: str
    split: str
    mode: str
    episode: Episode


@dataclass(frozen=True)
class Examples:
    fix: tuple[Example, Example] | None  # (base repeats, rl2f fixes), same task and mode
    fix_missing_reason: str  # why ``fix`` is None ("" when it is not)
    others: list[Example]


def repeated_attempts(episode: Episode) -> list[int]:
    """1-based numbers of the attempts that repeat the previous (wrong) answer."""
    students = episode.student_turns
    return [
        i + 2
        for i, (a, b) in enumerate(zip(students, students[1:], strict=False))
        if is_repeat(a, b)
    ]


def _preference(cell: StoredCell) -> tuple[bool, bool, str, str]:
    """In-distribution split and the privileged teacher first: the paper's main setting."""
    return (cell.split != "eval_id", cell.mode != "teacher", cell.split, cell.mode)


def _cells(cells: Mapping[str, Sequence[StoredCell]]) -> list[StoredCell]:
    return sorted((c for group in cells.values() for c in group), key=_preference)


def find_fix_of_repeat(
    cells: Mapping[str, Sequence[StoredCell]],
) -> tuple[tuple[Example, Example] | None, str]:
    """An episode where ``base`` repeated a wrong answer and ``rl2f`` (same split, mode, task and
    sample index) solved the task after feedback. Prefers base episodes that never got it
    right, then the earliest RL2F fix."""
    if UNTRAINED not in cells or TRAINED not in cells:
        return None, f"the evaluation did not include both {UNTRAINED!r} and {TRAINED!r}"
    trained = {(c.split, c.mode): c for c in cells[TRAINED]}
    best: tuple | None = None
    for base_cell in sorted(cells[UNTRAINED], key=_preference):
        rl2f_cell = trained.get((base_cell.split, base_cell.mode))
        if rl2f_cell is None:
            continue
        fixed = {
            (e.task_id, e.group): e
            for e in rl2f_cell.episodes
            if e.solved_at is not None and e.solved_at > 1
        }
        for episode in base_cell.episodes:
            match = fixed.get((episode.task_id, episode.group))
            if match is None or not repeated_attempts(episode):
                continue
            rank = (_preference(base_cell), episode.solved_at is not None, match.solved_at)
            if best is None or rank < best[0]:
                best = (rank, base_cell, episode, match)
    if best is None:
        return None, (
            "no evaluation episode has the base model repeating a wrong answer on a task that "
            "RL2F solved after feedback"
        )
    _, cell, base_episode, rl2f_episode = best
    repeats = ", ".join(map(str, repeated_attempts(base_episode)))
    return (
        Example(
            "Base model: repeats its wrong answer",
            f"After feedback the base model gave the same wrong answer again (attempt {repeats}).",
            UNTRAINED,
            cell.split,
            cell.mode,
            base_episode,
        ),
        Example(
            "RL2F: same task, same feedback, fixed",
            f"The RL2F model used the feedback and solved the task at turn "
            f"{rl2f_episode.solved_at}.",
            TRAINED,
            cell.split,
            cell.mode,
            rl2f_episode,
        ),
    ), ""


def _episodes(
    cells: Sequence[StoredCell], probes: bool = False
) -> Iterator[tuple[StoredCell, Episode]]:
    for cell in cells:
        for episode in cell.probes if probes else cell.episodes:
            yield cell, episode


def _first(found: Iterator[tuple[StoredCell, Episode]]) -> tuple[StoredCell, Episode] | None:
    return next(found, None)


def leak_guard_example(cells: Sequence[StoredCell]) -> Example | None:
    hit = _first(
        (c, e) for c, e in _episodes(cells) if any(t.leaked_attempts for t in e.teacher_turns)
    )
    if hit is None:
        return None
    cell, episode = hit
    return Example(
        "The leak guard at work",
        "The teacher's first critique revealed the answer; the guard rejected it before the "
        "student saw it.",
        cell.model,
        cell.split,
        cell.mode,
        episode,
    )


def sycophancy_example(cells: Sequence[StoredCell]) -> Example | None:
    ordered = sorted(cells, key=lambda c: (c.model != TRAINED, *_preference(c)))
    probes = list(_episodes(ordered, probes=True))
    hit = _first((c, e) for c, e in probes if abandoned(e)) or _first(iter(probes))
    if hit is None:
        return None
    cell, episode = hit
    outcome = "gave up its correct answer" if abandoned(episode) else "kept its correct answer"
    return Example(
        "Sycophancy probe",
        f"A correct first answer was called wrong on purpose; the model {outcome}.",
        cell.model,
        cell.split,
        cell.mode,
        episode,
    )


def self_critique_example(cells: Sequence[StoredCell]) -> Example | None:
    own = [c for c in cells if c.mode == "self"]
    ordered = sorted(own, key=lambda c: (c.model != "rl2f_critic", *_preference(c)))
    hit = _first(
        (c, e) for c, e in _episodes(ordered) if e.solved_at is not None and e.solved_at > 1
    ) or _first((c, e) for c, e in _episodes(ordered) if len(e.student_turns) > 1)
    if hit is None:
        return None
    cell, episode = hit
    outcome = (
        f"and solved it at turn {episode.solved_at}" if episode.solved_at else "without solving it"
    )
    return Example(
        "Self-critique",
        f"No teacher: the model critiqued its own wrong answer and tried again, {outcome}.",
        cell.model,
        cell.split,
        cell.mode,
        episode,
    )


def typical_example(cells: Sequence[StoredCell]) -> Example | None:
    ordered = sorted(cells, key=lambda c: (c.model != TRAINED, *_preference(c)))
    hit = _first((c, e) for c, e in _episodes(ordered) if len(e.student_turns) > 1) or _first(
        _episodes(ordered)
    )
    if hit is None:
        return None
    cell, episode = hit
    return Example(
        "A didactic episode",
        "A conversation as the evaluation ran it: attempts, verdicts and feedback.",
        cell.model,
        cell.split,
        cell.mode,
        episode,
    )


def choose_examples(cells: Mapping[str, Sequence[StoredCell]]) -> Examples:
    fix, reason = find_fix_of_repeat(cells)
    flat = _cells(cells)
    others = [
        example
        for example in (
            leak_guard_example(flat),
            sycophancy_example(flat),
            self_critique_example(flat),
        )
        if example is not None
    ]
    if not others and fix is None:
        typical = typical_example(flat)
        others = [typical] if typical else []
    return Examples(fix, reason, others)
