"""What the evaluation of one model puts in its MLflow child run.

- Metrics named ``<split>/<mode>/<metric>``; per-turn curves use ``step=turn`` so the MLflow UI
  draws accuracy by turn and overlays runs.
- ``episodes.json``: every episode as a table row (the conversation as readable text).
- Traces: one per episode (capped at ``tracking.max_traces`` per model), a span per turn, and
  the episode's reward attached as feedback, so a person can open a conversation from the run.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from itertools import zip_longest
from typing import Any

from rl2f.episodes import Episode
from rl2f.evaluation.runner import Cell
from rl2f.tracking import log_metrics_by_turn

log = logging.getLogger(__name__)

TABLE_FILE = "episodes.json"


def log_cell_metrics(mlflow: Any, split: str, mode: str, metrics: dict[str, Any]) -> None:
    prefix = f"{split}/{mode}"
    log_metrics_by_turn(mlflow, f"{prefix}/acc", metrics["acc_by_turn"])
    log_metrics_by_turn(mlflow, f"{prefix}/acc_ci95_lo", [lo for lo, _ in metrics["ci95_by_turn"]])
    log_metrics_by_turn(mlflow, f"{prefix}/acc_ci95_hi", [hi for _, hi in metrics["ci95_by_turn"]])
    scalars = {
        f"{prefix}/{name}": float(value)
        for name, value in metrics.items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }
    mlflow.log_metrics(scalars)


def _prompt(episode: Episode) -> str:
    return episode.student_visible[0] if episode.student_visible else ""


def conversation_text(episode: Episode) -> str:
    """The conversation as plain text with the verifier's verdict on every attempt."""
    lines = [f"[task] {_prompt(episode)}"]
    attempt = 0
    for turn in episode.turns:
        if turn.role == "student":
            attempt += 1
            verdict = "correct" if turn.correct else "wrong"
            lines.append(f"[student {attempt}: {verdict}] {turn.text}")
        else:
            guard = f" (leak guard rejected {turn.leaked_attempts})" if turn.leaked_attempts else ""
            lines.append(f"[teacher{guard}] {turn.text}")
    return "\n".join(lines)


def episode_rows(cells: Sequence[Cell]) -> list[dict[str, Any]]:
    rows = []
    for cell in cells:
        for kind, episodes in (("main", cell.episodes), ("sycophancy_probe", cell.probes)):
            for episode in episodes:
                last = episode.student_turns[-1]
                rows.append(
                    {
                        "model": cell.model,
                        "split": cell.split,
                        "mode": cell.mode,
                        "kind": kind,
                        "task_id": episode.task_id,
                        "group": episode.group,
                        "teacher": episode.teacher,
                        "solved_at": episode.solved_at,
                        "reward": episode.reward,
                        "attempts": len(episode.student_turns),
                        "final_answer": last.extracted,
                        "final_correct": bool(last.correct),
                        "conversation": conversation_text(episode),
                    }
                )
    return rows


def log_episode_table(mlflow: Any, cells: Sequence[Cell]) -> None:
    import pandas as pd

    rows = episode_rows(cells)
    if rows:
        mlflow.log_table(data=pd.DataFrame(rows), artifact_file=TABLE_FILE)


def _interleaved(cells: Sequence[Cell]) -> Iterator[tuple[Cell, Episode]]:
    """Episodes taken in turn from every cell, so a trace cap samples all cells."""
    for row in zip_longest(*[[(cell, e) for e in cell.episodes] for cell in cells]):
        yield from (item for item in row if item is not None)


def log_traces(mlflow: Any, cells: Sequence[Cell], max_traces: int) -> int:
    """One trace per episode, at most ``max_traces``; returns how many were logged."""
    from mlflow.entities import AssessmentSource, AssessmentSourceType, SpanType

    source = AssessmentSource(source_type=AssessmentSourceType.CODE, source_id="rl2f.verifier")
    logged = 0
    for cell, episode in _interleaved(cells):
        if logged >= max_traces:
            break
        name = f"{cell.model}/{cell.split}/{cell.mode}/{episode.task_id}/{episode.group}"
        with mlflow.start_span(name=name, span_type=SpanType.AGENT) as root:
            root.set_inputs({"prompt": _prompt(episode)})
            mlflow.update_current_trace(
                tags={
                    "rl2f.model": cell.model,
                    "rl2f.split": cell.split,
                    "rl2f.mode": cell.mode,
                    "rl2f.task_id": episode.task_id,
                }
            )
            _turn_spans(mlflow, episode, SpanType)
            root.set_outputs({"solved_at": episode.solved_at, "reward": episode.reward})
            trace_id = root.trace_id
        mlflow.log_feedback(
            trace_id=trace_id,
            name="reward",
            value=episode.reward,
            source=source,
            rationale=(
                f"solved at turn {episode.solved_at}"
                if episode.solved_at
                else f"not solved in {len(episode.student_turns)} attempts"
            ),
        )
        logged += 1
    # Trace export may be asynchronous; the run must not close with traces still queued.
    mlflow.flush_trace_async_logging()
    return logged


def _turn_spans(mlflow: Any, episode: Episode, span_types: Any) -> None:
    attempt = 0
    for turn in episode.turns:
        if turn.role == "student":
            attempt += 1
            with mlflow.start_span(
                name=f"student turn {attempt}", span_type=span_types.LLM
            ) as span:
                span.set_attributes(
                    {"turn": attempt, "tokens": len(turn.token_ids), "correct": bool(turn.correct)}
                )
                span.set_outputs(
                    {"text": turn.text, "extracted": turn.extracted, "correct": turn.correct}
                )
        else:
            with mlflow.start_span(name=f"feedback after turn {attempt}") as span:
                span.set_attributes(
                    {
                        "turn": attempt,
                        "leaked_attempts": turn.leaked_attempts,
                        "fell_back": turn.fell_back,
                    }
                )
                span.set_outputs({"text": turn.text})
