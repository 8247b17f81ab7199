"""What every teacher sees and returns.

A teacher gets the public conversation and, unless it is the ``self`` teacher, the privileged
task (answer, solution, tests) and the verifier's diagnostics. It returns one critique per
request; the leak guard (:mod:`rl2f.leakage`) checks each one before the student sees it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from rl2f.engines.base import Message
from rl2f.tasks.schema import Task
from rl2f.tasks.verifiers.base import Verdict


@dataclass(frozen=True)
class CritiqueRequest:
    task: Task  # privileged: only teachers that are allowed to may read answer/solution
    conversation: list[Message]  # the public conversation so far, ending with the attempt
    attempt: str  # the student's last answer text
    verdict: Verdict  # the verifier's diagnostics for that attempt
    turn: int  # 1-based index of the attempt being critiqued
    attempt_number: int = 0  # regeneration counter used by the leak guard (0 = first try)


class Teacher(Protocol):
    name: str
    privileged: bool  # False for teachers that must never read the answer (``self``)

    def critique(self, requests: list[CritiqueRequest]) -> list[str]:
        """One critique per request; "" when the teacher has nothing to say (the guarded loop
        then sends the fallback message and counts it as a fallback)."""
        ...

    def close(self) -> None:
        """Release what the teacher owns (an engine it started); callers close every teacher
        the same way instead of reaching for its engine. It must not close an engine it was
        lent, such as the student's."""
        ...

    def engine_stats(self) -> dict[str, int]:
        """What the teacher's engine counted (requests, retries, rate limits, failures of an
        HTTP engine), for the stage's metrics; empty for a teacher without such counters."""
        ...
