"""The guarded critique loop: no critique reaches the student before the leak guard passed it.

The guard (:mod:`rl2f.leakage`) only judges a text; asking a teacher again for the critiques it
rejects, and falling back when they keep leaking, is teacher work, so the loop lives here and
the guard stays free of any teacher.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

from rl2f.leakage import CHECKS, LeakFlags, LeakGuard
from rl2f.teachers.base import CritiqueRequest, Teacher


@dataclass(frozen=True)
class GuardedCritique:
    """What the student is shown, and what it took to get there."""

    text: str
    leaked_attempts: int  # critiques the guard rejected for this request
    fell_back: bool  # True when every attempt leaked and ``text`` is the fallback message
    flags: LeakFlags = field(default_factory=LeakFlags)  # union over the rejected attempts


@dataclass(frozen=True)
class LeakStats:
    """Counts over many guarded critiques; add two to accumulate across turns and batches."""

    critiques: int = 0
    leaked: int = 0  # requests whose first critique leaked
    regenerations: int = 0  # extra teacher critiques requested after leaks
    fell_back: int = 0
    by_check: tuple[tuple[str, int], ...] = tuple((name, 0) for name in CHECKS)

    @classmethod
    def of(cls, guarded: Iterable[GuardedCritique]) -> LeakStats:
        guarded = list(guarded)
        return cls(
            critiques=len(guarded),
            leaked=sum(item.leaked_attempts > 0 for item in guarded),
            regenerations=sum(item.leaked_attempts - item.fell_back for item in guarded),
            fell_back=sum(item.fell_back for item in guarded),
            by_check=tuple(
                (name, sum(getattr(item.flags, name) for item in guarded)) for name in CHECKS
            ),
        )

    def __add__(self, other: LeakStats) -> LeakStats:
        return LeakStats(
            critiques=self.critiques + other.critiques,
            leaked=self.leaked + other.leaked,
            regenerations=self.regenerations + other.regenerations,
            fell_back=self.fell_back + other.fell_back,
            by_check=tuple(
                (name, count + dict(other.by_check)[name]) for name, count in self.by_check
            ),
        )

    @property
    def leak_rate(self) -> float:
        """Share of critiques whose first version leaked (the paper's ~0.3% figure)."""
        return self.leaked / self.critiques if self.critiques else 0.0

    @property
    def fallback_rate(self) -> float:
        return self.fell_back / self.critiques if self.critiques else 0.0

    def as_metrics(self, prefix: str = "leak/") -> dict[str, float]:
        metrics = {
            f"{prefix}critiques": float(self.critiques),
            f"{prefix}leaked": float(self.leaked),
            f"{prefix}regenerations": float(self.regenerations),
            f"{prefix}fell_back": float(self.fell_back),
            f"{prefix}rate": self.leak_rate,
            f"{prefix}fallback_rate": self.fallback_rate,
        }
        metrics.update({f"{prefix}{name}": float(count) for name, count in self.by_check})
        return metrics


def guarded_critiques(
    teacher: Teacher,
    requests: Sequence[CritiqueRequest],
    guard: LeakGuard,
    max_regenerations: int,
    fallback_message: str,
) -> list[GuardedCritique]:
    """Critiques for a batch, each checked before any student sees it.

    Leaking critiques are requested again (only those, in one batched call, with the request's
    ``attempt_number`` increased so the teacher can vary its output) up to ``max_regenerations``
    times; a request that still leaks gets ``fallback_message``, which is trusted config text.
    Teachers that never read privileged data (``self``, ``retry``) are not checked: whatever
    they write came from the student's side of the table.
    """
    if max_regenerations < 0:
        raise ValueError(f"max_regenerations must be >= 0, got {max_regenerations}")
    requests = list(requests)
    if not requests:
        return []
    texts = _critique(teacher, requests)
    if not teacher.privileged:
        return [GuardedCritique(text, 0, False) for text in texts]

    results: list[GuardedCritique | None] = [None] * len(requests)
    rejected = [0] * len(requests)
    rejected_flags = [LeakFlags() for _ in requests]
    pending = list(range(len(requests)))
    for round_index in range(max_regenerations + 1):
        leaking = []
        for index, text in zip(pending, texts, strict=True):
            flags = guard.check(requests[index].task, text)
            if flags.leaked:
                rejected[index] += 1
                rejected_flags[index] |= flags
                leaking.append(index)
            else:
                results[index] = GuardedCritique(
                    text, rejected[index], False, rejected_flags[index]
                )
        pending = leaking
        if not pending or round_index == max_regenerations:
            break
        retries = [
            replace(
                requests[index], attempt_number=requests[index].attempt_number + round_index + 1
            )
            for index in pending
        ]
        texts = _critique(teacher, retries)

    for index in pending:
        results[index] = GuardedCritique(
            fallback_message, rejected[index], True, rejected_flags[index]
        )
    return [result for result in results if result is not None]


def _critique(teacher: Teacher, requests: list[CritiqueRequest]) -> list[str]:
    texts = teacher.critique(requests)
    if len(texts) != len(requests):
        name = getattr(teacher, "name", type(teacher).__name__)
        raise RuntimeError(
            f"teacher {name!r} returned {len(texts)} critiques for {len(requests)} requests"
        )
    return list(texts)


__all__ = ["GuardedCritique", "LeakStats", "guarded_critiques"]
