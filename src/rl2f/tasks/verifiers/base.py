"""One interface for every verifier: a verdict plus structured diagnostics that a teacher can
turn into feedback without re-deriving them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from rl2f.tasks.schema import Task


@dataclass(frozen=True)
class Verdict:
    correct: bool
    # What the verifier read as the student's final answer (None when nothing could be parsed).
    extracted: str | None
    # JSON-serialisable facts about the attempt, e.g. {"expected": "12", "got": "13"},
    # {"failed_tests": [...]}, {"first_invalid_move": 3}. Keys are documented per verifier.
    diagnostics: dict[str, Any] = field(default_factory=dict)


class Verifier(Protocol):
    name: str

    def verify(self, task: Task, response: str) -> Verdict: ...


_REGISTRY: dict[str, Callable[[], Verifier]] = {}


def register(name: str) -> Callable[[Callable[[], Verifier]], Callable[[], Verifier]]:
    def wrap(factory: Callable[[], Verifier]) -> Callable[[], Verifier]:
        _REGISTRY[name] = factory
        return factory

    return wrap


def get_verifier(name: str) -> Verifier:
    if not _REGISTRY:
        import rl2f.tasks.verifiers  # noqa: F401  (registers the built-in verifiers)
    try:
        return _REGISTRY[name]()
    except KeyError:
        known = ", ".join(sorted(_REGISTRY)) or "none"
        raise KeyError(f"unknown verifier {name!r} (known: {known})") from None


def verify(task: Task, response: str) -> Verdict:
    return get_verifier(task.verifier).verify(task, response)
