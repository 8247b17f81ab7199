"""The ``maze`` verifier: walks the student's moves on a reasoning-gym ``shortest_path`` grid.

The grid (``entry.metadata.matrix``) has ``*`` start, ``#`` destination, ``O`` open and ``X``
blocked cells; the answer is a space-separated move list ("up up right") or "infeasible" when
no path exists. Any valid path of the shortest length is correct, not only the reference one.
The verdict is cross-checked with the generator's own scorer: both must accept.

Diagnostics: ``expected`` and ``got``; ``expected_length`` (moves in the reference answer, None
when infeasible); ``feasible`` (a path exists); ``got_moves`` (the moves read, lower-cased);
``claimed_infeasible``; ``first_invalid_move`` (0-based index or None) and ``invalid_reason``
("blocked", "out_of_bounds", "unknown_move" or None); ``reached_goal``; ``final_position``
(``[row, col]`` where the walk stopped: before the first invalid move, else after the last);
``is_shortest``; ``score`` (the generator's scorer).
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass
from typing import Any

from rl2f.errors import DataError
from rl2f.tasks.schema import Task
from rl2f.tasks.verifiers.base import Verdict, register
from rl2f.tasks.verifiers.extract import strict_single_answer
from rl2f.tasks.verifiers.reasoning_gym import generator, read_entry

MOVES = {"up": (-1, 0), "down": (1, 0), "left": (0, -1), "right": (0, 1)}
INFEASIBLE = "infeasible"
SUPPORTED_GENERATORS = ("shortest_path",)
START, GOAL, OPEN, BLOCKED = "*", "#", "O", "X"

Position = tuple[int, int]


@dataclass(frozen=True)
class Grid:
    cells: list[list[str]]
    start: Position
    goal: Position

    @classmethod
    def from_matrix(cls, matrix: Any, where: str) -> Grid:
        if (
            not isinstance(matrix, list)
            or not matrix
            or not all(isinstance(row, list) and row for row in matrix)
        ):
            raise DataError(f"{where} must be a non-empty list of rows")
        if len({len(row) for row in matrix}) != 1:
            raise DataError(f"{where} rows have different lengths")
        cells = [[str(cell) for cell in row] for row in matrix]
        found: dict[str, list[Position]] = {START: [], GOAL: []}
        for r, row in enumerate(cells):
            for c, cell in enumerate(row):
                if cell not in (START, GOAL, OPEN, BLOCKED):
                    raise DataError(f"{where}[{r}][{c}] is {cell!r}, not one of * # O X")
                if cell in found:
                    found[cell].append((r, c))
        for mark, places in found.items():
            if len(places) != 1:
                raise DataError(f"{where} has {len(places)} {mark!r} cells, expected exactly 1")
        return cls(cells=cells, start=found[START][0], goal=found[GOAL][0])

    def inside(self, position: Position) -> bool:
        r, c = position
        return 0 <= r < len(self.cells) and 0 <= c < len(self.cells[0])

    def blocked(self, position: Position) -> bool:
        return self.cells[position[0]][position[1]] == BLOCKED

    def shortest_distance(self) -> int | None:
        """Breadth-first search from start to goal; None when the goal cannot be reached."""
        distance = {self.start: 0}
        frontier = deque([self.start])
        while frontier:
            here = frontier.popleft()
            if here == self.goal:
                return distance[here]
            for dr, dc in MOVES.values():
                there = (here[0] + dr, here[1] + dc)
                if self.inside(there) and not self.blocked(there) and there not in distance:
                    distance[there] = distance[here] + 1
                    frontier.append(there)
        return None


@dataclass(frozen=True)
class Walk:
    final_position: Position
    first_invalid_move: int | None
    invalid_reason: str | None


def walk(grid: Grid, moves: list[str]) -> Walk:
    """Follow the moves until the first one that is unknown, leaves the grid or hits a wall."""
    position = grid.start
    for index, move in enumerate(moves):
        if move not in MOVES:
            return Walk(position, index, "unknown_move")
        dr, dc = MOVES[move]
        there = (position[0] + dr, position[1] + dc)
        if not grid.inside(there):
            return Walk(position, index, "out_of_bounds")
        if grid.blocked(there):
            return Walk(position, index, "blocked")
        position = there
    return Walk(position, None, None)


def read_moves(answer: str) -> list[str]:
    """Moves separated by spaces or commas, any case: "Up, up, RIGHT" is three moves."""
    return [token for token in re.split(r"[\s,]+", answer.lower()) if token]


@register("maze")
class MazeVerifier:
    name = "maze"

    def verify(self, task: Task, response: str) -> Verdict:
        name, entry = read_entry(task)
        if name not in SUPPORTED_GENERATORS:
            raise DataError(
                f"task {task.id}: verifier_config.dataset is {name!r}; the maze verifier reads "
                f"the grids of {', '.join(SUPPORTED_GENERATORS)}"
            )
        where = f"task {task.id}: verifier_config.entry.metadata.matrix"
        grid = Grid.from_matrix(entry.get("metadata", {}).get("matrix"), where)
        expected = entry["answer"].strip()
        expected_moves = read_moves(expected)
        distance = grid.shortest_distance()
        expected_length = None if expected_moves == [INFEASIBLE] else len(expected_moves)
        if expected_length != distance:
            raise DataError(
                f"task {task.id}: verifier_config.entry.answer {expected!r} is not a shortest "
                f"path of the grid ({distance} moves)"
            )

        got = strict_single_answer(response)
        moves = read_moves(got) if got is not None else []
        claimed_infeasible = moves == [INFEASIBLE]
        steps = [] if claimed_infeasible else moves
        result = walk(grid, steps)
        reached_goal = (
            bool(steps)
            and result.first_invalid_move is None
            and (result.final_position == grid.goal)
        )
        is_shortest = reached_goal and len(steps) == distance
        own_verdict = is_shortest or (claimed_infeasible and distance is None)
        score = float(generator(name).score_answer(" ".join(moves), entry)) if moves else 0.0

        diagnostics = {
            "expected": entry["answer"],
            "got": got,
            "expected_length": expected_length,
            "feasible": distance is not None,
            "got_moves": steps,
            "claimed_infeasible": claimed_infeasible,
            "first_invalid_move": result.first_invalid_move,
            "invalid_reason": result.invalid_reason,
            "reached_goal": reached_goal,
            "final_position": list(result.final_position),
            "is_shortest": is_shortest,
            "score": score,
        }
        return Verdict(correct=own_verdict and score == 1.0, extracted=got, diagnostics=diagnostics)
