"""The guarded critique loop: no critique reaches the student before the leak guard passed it.

The guard (:mod:`rl2f.leakage`) only judges a text; asking a teacher again for the critiques it
rejects, and falling back when they keep leaking, is teacher work, so the loop lives here and
the guard stays free of any teacher.

Every fallback is decided here, so every one is counted: a teacher that has nothing to say (an
LLM or self critique that is empty once cleaned) returns "" and the loop sends the fallback
message, marked ``fell_back`` like a leak fallback, so it is never mistaken for a critique (nor
distilled as one).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from rl2f.leakage import CHECKS, LeakFlags, LeakGuard
from rl2f.teachers.base import CritiqueRequest, Teacher


@dataclass(frozen=True)
class GuardedCritique:
    """What the student is shown, and what it took to get there."""

    text: str
    leaked_attempts: int  # critiques the guard rejected for this request
    fell_back: bool  # True when ``text`` is the fallback message
    flags: LeakFlags = field(default_factory=LeakFlags)  # union over the rejected attempts
    fallback_reason: str = ""  # "leak" (every attempt leaked) or "empty" (nothing to say)

    @classmethod
    def fallback(
        cls, message: str, reason: str, rejected: int = 0, flags: LeakFlags | None = None
    ) -> GuardedCritique:
        return cls(message, rejected, True, flags or LeakFlags(), reason)


@dataclass(frozen=True)
class LeakStats:
    """Counts over many guarded critiques; add two to accumulate across turns and batches."""

    critiques: int = 0
    leaked: int = 0  # requests whose first critique leaked
    regenerations: int = 0  # extra teacher critiques requested after leaks
    fell_back: int = 0  # every fallback, whatever the reason
    empty: int = 0  # fallbacks because the teacher wrote nothing
    by_check: tuple[tuple[str, int], ...] = tuple((name, 0) for name in CHECKS)

    @classmethod
    def of(cls, guarded: Iterable[GuardedCritique]) -> LeakStats:
        return cls._count(
            (item.leaked_attempts, item.fell_back, item.fallback_reason == "empty", item.flags)
            for item in guarded
        )

    @classmethod
    def of_turns(cls, turns: Iterable[Any]) -> LeakStats:
        """The same counts from stored teacher turns (:class:`rl2f.episodes.Turn`), whose
        ``leak`` mapping holds the flags; a fallback without a rejected critique was empty."""
        return cls._count(
            (
                turn.leaked_attempts,
                turn.fell_back,
                turn.fell_back and not turn.leaked_attempts,
                turn.leak,
            )
            for turn in turns
        )

    @classmethod
    def _count(cls, items: Iterable[tuple[int, bool, bool, Mapping[str, Any]]]) -> LeakStats:
        items = list(items)
        return cls(
            critiques=len(items),
            leaked=sum(rejected > 0 for rejected, _, _, _ in items),
            # A leak fallback asked once more than it regenerated; an empty one did not.
            regenerations=sum(
                rejected - (fell_back and not empty) for rejected, fell_back, empty, _ in items
            ),
            fell_back=sum(fell_back for _, fell_back, _, _ in items),
            empty=sum(empty for _, _, empty, _ in items),
            by_check=tuple(
                (name, sum(bool(flags.get(name)) for _, _, _, flags in items)) for name in CHECKS
            ),
        )

    def __add__(self, other: LeakStats) -> LeakStats:
        return LeakStats(
            critiques=self.critiques + other.critiques,
            leaked=self.leaked + other.leaked,
            regenerations=self.regenerations + other.regenerations,
            fell_back=self.fell_back + other.fell_back,
            empty=self.empty + other.empty,
            by_check=tuple(
                (name, count + dict(other.by_check).get(name, 0)) for name, count in self.by_check
            ),
        )

    def rate_by_check(self) -> dict[str, float]:
        """Share of critiques whose rejected versions each check fired on."""
        return {
            name: count / self.critiques if self.critiques else 0.0 for name, count in self.by_check
        }

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
            f"{prefix}empty": float(self.empty),
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
    they write came from the student's side of the table. An empty critique, from any teacher,
    is replaced by ``fallback_message`` at once and counted as a fallback (reason "empty").
    """
    if max_regenerations < 0:
        raise ValueError(f"max_regenerations must be >= 0, got {max_regenerations}")
    requests = list(requests)
    if not requests:
        return []
    texts = _critique(teacher, requests)
    if not teacher.privileged:
        return [
            GuardedCritique(text, 0, False)
            if text.strip()
            else GuardedCritique.fallback(fallback_message, "empty")
            for text in texts
        ]

    results: list[GuardedCritique | None] = [None] * len(requests)
    rejected = [0] * len(requests)
    rejected_flags = [LeakFlags() for _ in requests]
    pending = list(range(len(requests)))
    for round_index in range(max_regenerations + 1):
        leaking = []
        flags_of = _check_written(guard, requests, pending, texts)
        for index, text in zip(pending, texts, strict=True):
            flags = flags_of.get(index)
            if flags is None:
                results[index] = _empty_fallback(
                    fallback_message, rejected[index], rejected_flags[index]
                )
            elif flags.leaked:
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
        results[index] = GuardedCritique.fallback(
            fallback_message, "leak", rejected[index], rejected_flags[index]
        )
    return [result for result in results if result is not None]


def _check_written(
    guard: LeakGuard, requests: list[CritiqueRequest], pending: list[int], texts: list[str]
) -> dict[int, LeakFlags]:
    """Flags of every non-empty critique, by request index, in one guard call (one judge batch);
    an empty critique has nothing to check."""
    written = [(index, text) for index, text in zip(pending, texts, strict=True) if text.strip()]
    checked = guard.check_many([(requests[index].task, text) for index, text in written])
    return dict(zip([index for index, _ in written], checked, strict=True))


def _empty_fallback(message: str, rejected: int, flags: LeakFlags) -> GuardedCritique:
    """A teacher that wrote nothing. On a regeneration, after leaks, the empty reply counts as
    one more rejected critique and the fallback as a leak fallback: the request could not get a
    clean critique, and the counts stay those of a leak fallback."""
    if rejected:
        return GuardedCritique.fallback(message, "leak", rejected + 1, flags)
    return GuardedCritique.fallback(message, "empty")


def _critique(teacher: Teacher, requests: list[CritiqueRequest]) -> list[str]:
    texts = teacher.critique(requests)
    if len(texts) != len(requests):
        name = getattr(teacher, "name", type(teacher).__name__)
        raise RuntimeError(
            f"teacher {name!r} returned {len(texts)} critiques for {len(requests)} requests"
        )
    return list(texts)


__all__ = ["GuardedCritique", "LeakStats", "guarded_critiques"]
