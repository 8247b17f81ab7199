"""The retry teacher: the same fixed message after every wrong attempt.

The control for "is it the content of the feedback that helps, or just another try?". It reads
nothing about the task, so it is not privileged.
"""

from __future__ import annotations

from rl2f.teachers.base import CritiqueRequest


class RetryTeacher:
    name = "retry"
    privileged = False

    def __init__(self, message: str) -> None:
        if not message.strip():
            raise ValueError("teacher.retry_message must not be empty")
        self.message = message

    def critique(self, requests: list[CritiqueRequest]) -> list[str]:
        return [self.message for _ in requests]

    def close(self) -> None:
        """Nothing to release: the retry message is fixed text."""

    def engine_stats(self) -> dict[str, int]:
        return {}
