"""``rl2f rollout``: didactic episodes of a trained policy with a teacher.

Reads ``<data.out_dir>/<rollout.split>.parquet``, rolls out the RL2F policy (``train.rl2f_dir``)
for ``train.max_turns`` turns against ``teacher`` and writes ``episodes.parquet`` (critique
distillation reads it), ``episodes.jsonl`` (for people) and ``summary.json`` to
``distill.episodes_dir``. Those three settings are not repeated under ``rollout:``: the episodes
exist to be distilled into that policy, so they must come from it, under the turn budget it was
trained with, and land where distill reads them.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from rl2f.config import Config
from rl2f.episodes import (
    Episode,
    format_summary,
    summarize,
    write_episodes,
    write_episodes_jsonl,
)
from rl2f.errors import DataError, UserError
from rl2f.tasks.io import atomic_write_text, read_tasks
from rl2f.tasks.schema import is_eval_split

log = logging.getLogger(__name__)

EPISODES_FILE = "episodes.parquet"
EPISODES_JSONL = "episodes.jsonl"
SUMMARY_FILE = "summary.json"


def check_rollout_split(cfg: Config) -> None:
    """Rollout episodes are what the critic is distilled from: rolling out on an evaluation
    split would train it on the problems it is evaluated on."""
    if is_eval_split(cfg.rollout.split):
        raise UserError(
            f"rollout.split: {cfg.rollout.split!r} is an evaluation split; rollout episodes "
            "train the critic (distill), so roll out on 'train'"
        )


def roll_out(cfg: Config, progress: bool = True) -> tuple[list[Episode], dict[str, Any]]:
    """The episodes and their per-turn summary, without writing anything."""
    from rl2f.engines import make_engine
    from rl2f.rollout import RolloutSettings, run_episodes
    from rl2f.teachers import make_teacher

    params = cfg.rollout
    check_rollout_split(cfg)
    tasks_path = Path(cfg.data.out_dir) / f"{params.split}.parquet"
    tasks = read_tasks(tasks_path)[: params.max_tasks]
    if not tasks:
        raise DataError(f"{tasks_path}: holds no tasks to roll out")
    model_dir = Path(cfg.train.rl2f_dir)
    if not model_dir.is_dir():
        raise UserError(
            f"train.rl2f_dir: {model_dir} is not a model directory (train it first, e.g. "
            "`rl2f train_rl2f`, or point train.rl2f_dir at one)"
        )
    if params.engine.kind not in ("transformers", "vllm"):
        raise UserError(
            f"rollout.engine.kind: {params.engine.kind!r} returns text, but the student is rolled "
            "out on token ids; use 'transformers' or 'vllm'"
        )

    student = make_engine(params.engine, str(model_dir), dtype=cfg.model.dtype)
    settings = RolloutSettings.from_config(
        cfg,
        num_generations=params.num_generations,
        max_turns=cfg.train.max_turns,
        progress=progress,
    )
    try:
        teacher = make_teacher(cfg.teacher, engine=student if cfg.teacher.kind == "self" else None)
        try:
            episodes = run_episodes(
                tasks,
                student,  # type: ignore[arg-type]  (a token engine: checked by kind above)
                teacher,
                settings,
                policy_name=model_dir.name,
            )
            engine_stats = teacher.engine_stats()
        finally:
            teacher.close()  # the self teacher leaves the student's engine open
    finally:
        student.close()
        settings.close()

    summary = summarize(episodes, cfg.train.max_turns)
    summary.update(
        split=params.split, policy=model_dir.name, teacher=teacher.name, model_dir=str(model_dir)
    )
    if engine_stats:  # an HTTP teacher's retries, rate limits and failures
        summary["teacher_engine"] = engine_stats
    return episodes, summary


def write_outputs(out_dir: str | Path, episodes: list[Episode], summary: dict[str, Any]) -> None:
    out_dir = Path(out_dir)
    write_episodes(out_dir / EPISODES_FILE, episodes)
    write_episodes_jsonl(out_dir / EPISODES_JSONL, episodes)
    atomic_write_text(out_dir / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")


def log_to_mlflow(cfg: Config, episodes: list[Episode], summary: dict[str, Any]) -> None:
    """Per-turn accuracy and leak curves (step = turn), the episodes as a table, and one trace
    per episode (a span per turn, the reward as feedback) on the active stage run."""
    from rl2f.evaluation.mlflow_log import log_episode_table, log_traces
    from rl2f.evaluation.runner import Cell
    from rl2f.tracking import active, log_metrics_by_turn

    run = active()
    if run is None:
        return
    log_metrics_by_turn(run, "rollout/acc", summary["acc_by_turn"])
    critiques = summary["critiques_by_turn"]
    leak_rate = [
        leaked / count if count else 0.0
        for leaked, count in zip(summary["leaked_critiques_by_turn"], critiques, strict=True)
    ]
    log_metrics_by_turn(run, "rollout/leak_rate", leak_rate)
    total = sum(critiques)
    run.log_metric(
        "rollout/leak_rate_overall",
        sum(summary["leaked_critiques_by_turn"]) / total if total else 0.0,
    )
    for check, count in summary["leaks_by_check"].items():
        run.log_metric(f"rollout/leak_rate/{check}", count / total if total else 0.0)
    cell = Cell(
        model=summary["policy"],
        split=cfg.rollout.split,
        mode=cfg.teacher.kind,
        max_turns=cfg.train.max_turns,
        leak_checked=cfg.teacher.kind in ("oracle", "llm"),
        episodes=episodes,
    )
    log_episode_table(run, [cell])
    if cfg.tracking.traces:
        log_traces(run, [cell], cfg.tracking.max_traces)


def run(cfg: Config) -> dict[str, Any]:
    episodes, summary = roll_out(cfg)
    write_outputs(cfg.distill.episodes_dir, episodes, summary)
    log_to_mlflow(cfg, episodes, summary)
    print(format_summary(summary))
    log.info("rollout: %d episodes written to %s", len(episodes), cfg.distill.episodes_dir)
    return {"stage": "rollout", "out_dir": cfg.distill.episodes_dir, **summary}
