"""Episode and Turn records: one didactic conversation between a student and a teacher.

An episode keeps two views of the same conversation. The turn list is what people and the
evaluation read (texts, verdicts, leak flags). The flat token view is what multi-turn GRPO trains
on: ``prompt_ids`` (the task prompt rendered with the chat template) followed by
``completion_ids``, every turn's tokens in order, where only the student's own sampled tokens carry
loss (``completion_mask`` 1) and teacher feedback is an observation (mask 0). The flat view is
derived from the turns, so the two can never disagree.

Episodes are stored as Parquet (one row per episode, turns as a nested column) and exported as
JSONL for reading.
"""

from __future__ import annotations

import io
import json
import math
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq

if TYPE_CHECKING:
    from rl2f.engines.base import Generation
    from rl2f.tasks.verifiers.base import Verdict

from rl2f.errors import DataError
from rl2f.tasks.io import atomic_write_bytes, atomic_write_text

Role = Literal["student", "teacher"]
ROLES: tuple[Role, ...] = ("student", "teacher")


def discounted_reward(solved_at: int | None, gamma: float) -> float:
    """Sparse conversation-level reward: ``gamma**(t-1)`` when solved at turn ``t``, else 0.
    Solving earlier is worth more, so the policy is pushed to get it right first, then to fix it
    fast."""
    if solved_at is None:
        return 0.0
    if solved_at < 1:
        raise ValueError(f"solved_at must be a 1-based turn number, got {solved_at}")
    return float(gamma ** (solved_at - 1))


@dataclass
class Turn:
    """One utterance. Student turns hold exactly the sampled ids; a teacher turn holds the
    environment tokens the student saw before its next attempt: the end of its own previous
    message as the chat template closes it, the feedback rendered as a user message, and the
    assistant header that opens the next attempt."""

    role: Role
    text: str
    token_ids: list[int]
    # Student turns: the verifier's verdict on this attempt.
    correct: bool | None = None
    extracted: str | None = None
    diagnostics: dict[str, Any] = field(default_factory=dict)
    finish_reason: str | None = None
    # Student turns: log-probability of each sampled token under the sampling distribution.
    logprobs: list[float] | None = None
    # Teacher turns: what the leak guard found, how many critiques it rejected, and whether the
    # student got the fixed fallback message instead of a critique.
    leak: dict[str, Any] = field(default_factory=dict)
    leaked_attempts: int = 0
    fell_back: bool = False

    @classmethod
    def attempt(cls, text: str, generation: Generation, verdict: Verdict) -> Turn:
        """A student turn: the sampled tokens exactly as generated, and the verifier's verdict."""
        return cls(
            role="student",
            text=text,
            token_ids=list(generation.token_ids),
            correct=verdict.correct,
            extracted=verdict.extracted,
            diagnostics=dict(verdict.diagnostics),
            finish_reason=generation.finish_reason,
            logprobs=None if generation.logprobs is None else list(generation.logprobs),
        )

    @property
    def error_from_answer(self) -> float | None:
        """A student turn's number minus the correct one (the verifier's ``numeric_error``:
        above 0 when too high, 0 when right); None when either is not a plain number."""
        error = self.diagnostics.get("numeric_error")
        if isinstance(error, int | float) and not isinstance(error, bool) and math.isfinite(error):
            return float(error)
        return None

    @property
    def distance_to_answer(self) -> float | None:
        """How far a student turn's number is from the correct one; None when unknown."""
        error = self.error_from_answer
        return None if error is None else abs(error)

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"turn role must be one of {ROLES}, got {self.role!r}")
        if self.logprobs is not None and len(self.logprobs) != len(self.token_ids):
            raise ValueError(
                f"{self.role} turn has {len(self.logprobs)} logprobs for "
                f"{len(self.token_ids)} tokens"
            )


@dataclass
class Episode:
    task_id: str
    domain: str
    split: str
    policy: str
    teacher: str
    group: int  # index of this episode among the G rolled out for the same task
    prompt_ids: list[int]
    turns: list[Turn]
    solved_at: int | None
    reward: float
    # Every text the student was conditioned on that it did not write itself: the task prompt,
    # then each feedback message. The information-asymmetry invariant is checked on these.
    student_visible: list[str] = field(default_factory=list)
    # Why the episode stopped: "solved", "max_turns", or "context_limit" (the next attempt would
    # not have fit the student's context); empty while it is still being rolled out.
    end_reason: str = ""

    @property
    def student_turns(self) -> list[Turn]:
        return [turn for turn in self.turns if turn.role == "student"]

    @property
    def teacher_turns(self) -> list[Turn]:
        return [turn for turn in self.turns if turn.role == "teacher"]

    @property
    def completion_ids(self) -> list[int]:
        return [token for turn in self.turns for token in turn.token_ids]

    @property
    def completion_mask(self) -> list[int]:
        """1 exactly on student-sampled tokens: the only tokens that carry policy-gradient loss."""
        return [int(turn.role == "student") for turn in self.turns for _ in turn.token_ids]

    @property
    def completion_logprobs(self) -> list[float]:
        """Sampling logprobs aligned with ``completion_ids``; 0.0 on environment tokens (and on
        student tokens of an engine that returned none)."""
        values: list[float] = []
        for turn in self.turns:
            if turn.role == "student" and turn.logprobs is not None:
                values.extend(turn.logprobs)
            else:
                values.extend([0.0] * len(turn.token_ids))
        return values

    @property
    def messages(self) -> list[dict[str, str]]:
        """The public conversation as chat messages (first prompt excluded: it is the task's)."""
        return [
            {"role": "assistant" if turn.role == "student" else "user", "content": turn.text}
            for turn in self.turns
        ]


# ---------------------------------------------------------------- Parquet
_TURN_TYPE = pa.struct(
    [
        ("role", pa.string()),
        ("text", pa.string()),
        ("token_ids", pa.list_(pa.int32())),
        ("correct", pa.bool_()),
        ("extracted", pa.string()),
        ("diagnostics", pa.string()),  # JSON: verifier-specific, no fixed schema
        ("finish_reason", pa.string()),
        ("logprobs", pa.list_(pa.float64())),
        ("leak", pa.string()),  # JSON: guard-specific flags
        ("leaked_attempts", pa.int32()),
        ("fell_back", pa.bool_()),
    ]
)

EPISODE_SCHEMA = pa.schema(
    [
        ("task_id", pa.string()),
        ("domain", pa.string()),
        ("split", pa.string()),
        ("policy", pa.string()),
        ("teacher", pa.string()),
        ("group", pa.int32()),
        ("solved_at", pa.int32()),
        ("reward", pa.float64()),
        ("end_reason", pa.string()),
        ("num_turns", pa.int32()),
        ("prompt_ids", pa.list_(pa.int32())),
        # Derived from the turns; stored so trainers and notebooks need not rebuild them.
        ("completion_ids", pa.list_(pa.int32())),
        ("completion_mask", pa.list_(pa.int8())),
        ("completion_logprobs", pa.list_(pa.float64())),
        ("student_visible", pa.list_(pa.string())),
        ("turns", pa.list_(_TURN_TYPE)),
    ]
)


def _turn_row(turn: Turn) -> dict[str, Any]:
    return {
        "role": turn.role,
        "text": turn.text,
        "token_ids": turn.token_ids,
        "correct": turn.correct,
        "extracted": turn.extracted,
        "diagnostics": json.dumps(turn.diagnostics, sort_keys=True, default=str),
        "finish_reason": turn.finish_reason,
        "logprobs": turn.logprobs,
        "leak": json.dumps(turn.leak, sort_keys=True, default=str),
        "leaked_attempts": turn.leaked_attempts,
        "fell_back": turn.fell_back,
    }


def _episode_fields(episode: Episode) -> dict[str, Any]:
    """What identifies an episode and how it ended: shared by the Parquet and JSONL rows."""
    return {
        "task_id": episode.task_id,
        "domain": episode.domain,
        "split": episode.split,
        "policy": episode.policy,
        "teacher": episode.teacher,
        "group": episode.group,
        "solved_at": episode.solved_at,
        "reward": episode.reward,
        "end_reason": episode.end_reason,
    }


def episode_row(episode: Episode) -> dict[str, Any]:
    return {
        **_episode_fields(episode),
        "num_turns": len(episode.student_turns),
        "prompt_ids": episode.prompt_ids,
        "completion_ids": episode.completion_ids,
        "completion_mask": episode.completion_mask,
        "completion_logprobs": episode.completion_logprobs,
        "student_visible": episode.student_visible,
        "turns": [_turn_row(turn) for turn in episode.turns],
    }


def _turn_from_row(row: dict[str, Any]) -> Turn:
    return Turn(
        role=row["role"],
        text=row["text"],
        token_ids=list(row["token_ids"]),
        correct=row["correct"],
        extracted=row["extracted"],
        diagnostics=json.loads(row["diagnostics"]) if row["diagnostics"] else {},
        finish_reason=row["finish_reason"],
        logprobs=None if row["logprobs"] is None else list(row["logprobs"]),
        leak=json.loads(row["leak"]) if row["leak"] else {},
        leaked_attempts=int(row["leaked_attempts"] or 0),
        fell_back=bool(row["fell_back"]),
    )


def episode_from_row(row: dict[str, Any]) -> Episode:
    return Episode(
        task_id=row["task_id"],
        domain=row["domain"],
        split=row["split"],
        policy=row["policy"],
        teacher=row["teacher"],
        group=int(row["group"]),
        prompt_ids=list(row["prompt_ids"]),
        turns=[_turn_from_row(turn) for turn in row["turns"]],
        solved_at=None if row["solved_at"] is None else int(row["solved_at"]),
        reward=float(row["reward"]),
        student_visible=list(row["student_visible"] or []),
        end_reason=row["end_reason"] or "",
    )


def write_episodes(path: str | os.PathLike[str], episodes: list[Episode]) -> None:
    """Atomic: a crash mid-write leaves the previous file (or none), never a truncated one."""
    table = pa.Table.from_pylist([episode_row(e) for e in episodes], schema=EPISODE_SCHEMA)
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def read_episodes(path: str | os.PathLike[str]) -> list[Episode]:
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: episode file not found (run `rl2f rollout` first)")
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        raise DataError(f"{path}: not a readable Parquet file ({exc})") from None
    missing = [name for name in EPISODE_SCHEMA.names if name not in table.column_names]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}")
    episodes = []
    for index, row in enumerate(table.to_pylist()):
        try:
            episodes.append(episode_from_row(row))
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{path}: row {index}: {exc}") from None
    return episodes


def write_episodes_jsonl(path: str | os.PathLike[str], episodes: list[Episode]) -> None:
    """The human-readable export: the conversation and its verdicts, without token arrays (those
    live in the Parquet file)."""
    lines = []
    for episode in episodes:
        record = {
            **_episode_fields(episode),
            "turns": [
                {
                    "role": turn.role,
                    "text": turn.text,
                    **(
                        {"correct": turn.correct, "extracted": turn.extracted}
                        if turn.role == "student"
                        else {
                            "leaked_attempts": turn.leaked_attempts,
                            "fell_back": turn.fell_back,
                            "leak": turn.leak,
                        }
                    ),
                }
                for turn in episode.turns
            ],
        }
        lines.append(json.dumps(record, ensure_ascii=False, default=str))
    atomic_write_text(path, "".join(line + "\n" for line in lines))


# ---------------------------------------------------------------- summary
def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def summarize(episodes: list[Episode], max_turns: int | None = None) -> dict[str, Any]:
    """Per-turn view of a rollout: cumulative accuracy (share of episodes solved at or before
    turn t), how many episodes were still going, their mean student tokens, and what the leak
    guard did with the critiques that followed turn t."""
    if max_turns is None:
        max_turns = max((len(e.student_turns) for e in episodes), default=0)
    reached = [0] * max_turns
    solved_by = [0] * max_turns
    tokens: list[list[float]] = [[] for _ in range(max_turns)]
    critiques = [0] * max_turns
    leaked = [0] * max_turns
    leaked_attempts = [0] * max_turns
    fallbacks = [0] * max_turns
    by_domain: dict[str, list[Episode]] = defaultdict(list)
    for episode in episodes:
        by_domain[episode.domain].append(episode)
        attempt = 0
        for turn in episode.turns:
            if turn.role == "student":
                attempt += 1
                if attempt > max_turns:
                    raise ValueError(
                        f"episode {episode.task_id}/{episode.group} has more than "
                        f"{max_turns} attempts"
                    )
                reached[attempt - 1] += 1
                tokens[attempt - 1].append(len(turn.token_ids))
            else:
                critiques[attempt - 1] += 1
                leaked[attempt - 1] += int(turn.leaked_attempts > 0)
                leaked_attempts[attempt - 1] += turn.leaked_attempts
                fallbacks[attempt - 1] += int(turn.fell_back)
        if episode.solved_at is not None:
            for t in range(episode.solved_at - 1, max_turns):
                solved_by[t] += 1
    n = len(episodes)
    return {
        "episodes": n,
        "tasks": len({e.task_id for e in episodes}),
        "max_turns": max_turns,
        "mean_reward": _mean([e.reward for e in episodes]),
        "acc_by_turn": [solved / n if n else 0.0 for solved in solved_by],
        "active_by_turn": reached,
        "student_tokens_by_turn": [_mean(values) for values in tokens],
        "critiques_by_turn": critiques,
        "leaked_critiques_by_turn": leaked,
        "leaked_attempts_by_turn": leaked_attempts,
        "fallbacks_by_turn": fallbacks,
        "leaks_by_check": _leaks_by_check(episodes),
        "end_reasons": dict(sorted(Counter(e.end_reason for e in episodes).items())),
        "by_domain": {
            domain: {
                "episodes": len(group),
                "acc_by_turn": summarize(group, max_turns)["acc_by_turn"],
            }
            for domain, group in sorted(by_domain.items())
        }
        if len(by_domain) > 1
        else {},
    }


def _leaks_by_check(episodes: list[Episode]) -> dict[str, int]:
    """Critiques each leak check rejected a version of, over the whole rollout."""
    from rl2f.teachers.guarded import LeakStats

    turns = [turn for episode in episodes for turn in episode.teacher_turns]
    return dict(LeakStats.of_turns(turns).by_check)


def format_summary(summary: dict[str, Any]) -> str:
    """A small fixed-width table for the terminal and logs."""

    def cell(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    header = f"{'turn':>4} {'active':>7} {'cum_acc':>8} {'tokens':>7} {'critiques':>9} "
    header += f"{'leaked':>7} {'fallback':>8}"
    lines = [
        f"{summary['episodes']} episodes over {summary['tasks']} tasks, "
        f"mean reward {cell(summary['mean_reward'], '.3f')}",
        header,
    ]
    for t in range(summary["max_turns"]):
        lines.append(
            f"{t + 1:>4} {summary['active_by_turn'][t]:>7} "
            f"{cell(summary['acc_by_turn'][t], '.3f'):>8} "
            f"{cell(summary['student_tokens_by_turn'][t], '.1f'):>7} "
            f"{summary['critiques_by_turn'][t]:>9} "
            f"{summary['leaked_critiques_by_turn'][t]:>7} "
            f"{summary['fallbacks_by_turn'][t]:>8}"
        )
    if summary["end_reasons"]:
        ends = ", ".join(
            f"{reason or 'running'} {n}" for reason, n in summary["end_reasons"].items()
        )
        lines.append(f"ended: {ends}")
    for domain, stats in summary["by_domain"].items():
        accuracy = " ".join(cell(a, ".3f") for a in stats["acc_by_turn"])
        lines.append(f"{domain}: {stats['episodes']} episodes, cum_acc by turn {accuracy}")
    return "\n".join(lines)
