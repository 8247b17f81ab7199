"""Procedurally generated tasks from reasoning-gym: unlimited, offline, with exact scorers.

The whole generator entry (question, answer, metadata) goes into the verifier config, because
several reasoning-gym scorers need the metadata (a maze's grid, a puzzle's givens) to judge an
answer that differs from the reference but is still right.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import reasoning_gym
from reasoning_gym.factory import DATASETS

from rl2f.config import SourceConfig
from rl2f.errors import UserError
from rl2f.tasks.schema import Task

# Kept to one short line: the tiny bootstrapped model has to learn to follow it, and the
# ``math`` and ``reasoning_gym`` verifiers parse what follows "Answer:".
ANSWER_INSTRUCTION = "Give your final answer after 'Answer:'."

MATH_CATEGORIES = frozenset({"arithmetic", "algebra", "geometry", "probability"})
MAZE_GENERATORS = frozenset({"shortest_path"})


def infer_domain(name: str) -> str:
    """The domain a generator belongs to when the source does not name one."""
    if name in MAZE_GENERATORS:
        return "maze"
    category = DATASETS[name][0].__module__.split(".")[1]
    return "math" if category in MATH_CATEGORIES else "puzzle"


def verifier_for(name: str, domain: str) -> str:
    if name in MAZE_GENERATORS:
        return "maze"
    return "math" if domain == "math" else "reasoning_gym"


def to_json_safe(value: Any) -> Any:
    """Generator metadata holds tuples, sets and numpy scalars; Parquet stores it as JSON, so
    convert once here rather than let ``json.dumps(default=str)`` turn a grid into a string."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Mapping):
        return {str(key): to_json_safe(item) for key, item in value.items()}
    if isinstance(value, set | frozenset):
        return [to_json_safe(item) for item in sorted(value, key=repr)]
    if isinstance(value, list | tuple):
        return [to_json_safe(item) for item in value]
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return to_json_safe(value.tolist())
    return str(value)


def build_prompt(question: str, answer: str) -> str:
    """Single-line answers get the shared ``Answer:`` convention; multi-line answers (a sudoku
    grid) keep the generator's own format instruction, which already says how to lay them out."""
    question = question.strip()
    if "\n" in answer.strip():
        return question
    return f"{question}\n{ANSWER_INSTRUCTION}"


def load(source: SourceConfig) -> list[Task]:
    name = source.name
    if name not in DATASETS:
        raise UserError(
            f"reasoning_gym source {name!r}: no such generator "
            "(see reasoning_gym.factory.DATASETS for the names)"
        )
    try:
        dataset = reasoning_gym.create_dataset(
            name, size=source.size, seed=source.seed, **source.config
        )
    except (TypeError, ValueError, AssertionError) as exc:
        raise UserError(
            f"reasoning_gym source {name!r}: bad config {source.config}: {exc}"
        ) from None

    domain = source.domain or infer_domain(name)
    verifier = verifier_for(name, domain)
    tasks = []
    for index, entry in enumerate(dataset):
        question, answer = str(entry["question"]), str(entry["answer"])
        metadata = to_json_safe(entry.get("metadata") or {})
        tasks.append(
            Task(
                domain=domain,
                source=f"reasoning_gym:{name}",
                prompt=build_prompt(question, answer),
                answer=answer,
                verifier=verifier,
                verifier_config={
                    "dataset": name,
                    "entry": {"question": question, "answer": answer, "metadata": metadata},
                },
                metadata={
                    "index": index,
                    "seed": source.seed,
                    "difficulty": metadata.get("difficulty", {}),
                },
            )
        )
    return tasks
