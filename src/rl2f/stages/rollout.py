"""``rl2f rollout``: didactic episodes of a trained policy with a teacher.

Reads ``<data.out_dir>/<rollout.split>.parquet``, rolls out the RL2F policy (``train.rl2f_dir``)
for ``train.max_turns`` turns against ``teacher`` and writes ``episodes.parquet`` (critique
distillation reads it), ``episodes.jsonl`` (for people) and ``summary.json`` to
``distill.episodes_dir``. Those three settings are not repeated under ``rollout:``: the episodes
exist to be distilled into that policy, so they must come from it, under the turn budget it was
trained with, and land where distill reads them.

Tasks are rolled out in shards of ``SHARD_TASKS``, each written to ``<episodes_dir>.partial/``
as it finishes (outside the folder DVC deletes before rerunning the stage). A rerun after a
crash with the same settings reuses the finished shards; the episodes are those of an
uninterrupted run, since each episode's random stream is named by its index in the whole run.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from rl2f.config import Config
from rl2f.cpu_threads import fix_cpu_threads
from rl2f.episodes import (
    Episode,
    format_summary,
    read_episodes,
    summarize,
    write_episodes,
    write_episodes_jsonl,
)
from rl2f.errors import DataError, UserError
from rl2f.tasks.io import (
    atomic_write_text,
    claim_work_dir,
    folder_identity,
    partial_dir,
    read_tasks,
    replace_dir,
    staging_dir,
)
from rl2f.tasks.schema import Task, is_eval_split

log = logging.getLogger(__name__)

EPISODES_FILE = "episodes.parquet"
EPISODES_JSONL = "episodes.jsonl"
SUMMARY_FILE = "summary.json"
# Tasks rolled out and written per shard: a rerun after a crash redoes at most one shard. Small
# enough that a shard of the default run (64 tasks x 4 episodes) takes seconds, large enough
# that the student still samples in full batches.
SHARD_TASKS = 16


def check_rollout_split(cfg: Config) -> None:
    """Rollout episodes are what the critic is distilled from: rolling out on an evaluation
    split would train it on the problems it is evaluated on."""
    if is_eval_split(cfg.rollout.split):
        raise UserError(
            f"rollout.split: {cfg.rollout.split!r} is an evaluation split; rollout episodes "
            "train the critic (distill), so roll out on 'train'"
        )


def roll_out(cfg: Config, progress: bool = True) -> tuple[list[Episode], dict[str, Any]]:
    """The episodes and their per-turn summary; finished shards are kept in
    ``<distill.episodes_dir>.partial`` until :func:`write_outputs` publishes them."""
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

    scratch = claim_work_dir(partial_dir(cfg.distill.episodes_dir), run_key(cfg, tasks))
    shards = [tasks[start : start + SHARD_TASKS] for start in range(0, len(tasks), SHARD_TASKS)]
    todo = [i for i in range(len(shards)) if not shard_path(scratch, i).is_file()]
    if len(todo) < len(shards):
        log.info(
            "rollout: reusing %d finished shard(s) of %d", len(shards) - len(todo), len(shards)
        )
    engine_stats = roll_out_shards(cfg, shards, todo, scratch, progress) if todo else {}
    # Read back even the shards just written, so a resumed run and an uninterrupted one build
    # their outputs from the very same records.
    episodes = [e for i in range(len(shards)) for e in read_episodes(shard_path(scratch, i))]

    summary = summarize(episodes, cfg.train.max_turns)
    summary.update(
        split=params.split,
        policy=model_dir.name,
        teacher=episodes[0].teacher,
        model_dir=str(model_dir),
    )
    if engine_stats:  # an HTTP teacher's retries, rate limits and failures
        summary["teacher_engine"] = engine_stats
    return episodes, summary


def run_key(cfg: Config, tasks: list[Task]) -> dict[str, Any]:
    """What decides the episodes: finished shards are reused only under the same settings."""
    return {
        "rollout": cfg.rollout.model_dump(mode="json"),
        "teacher": cfg.teacher.model_dump(mode="json"),
        "max_turns": cfg.train.max_turns,
        "dtype": cfg.model.dtype,
        "model": folder_identity(cfg.train.rl2f_dir),
        "tasks": [task.id for task in tasks],
        "shard_tasks": SHARD_TASKS,
    }


def shard_path(scratch: Path, shard: int) -> Path:
    return scratch / f"shard-{shard:05d}.parquet"


def roll_out_shards(
    cfg: Config, shards: list[list[Task]], todo: list[int], scratch: Path, progress: bool
) -> dict[str, int]:
    """Roll out the shards numbered ``todo``, each written to the scratch folder (atomically)
    as soon as it is done. Returns the teacher engine's counters (of this run's shards)."""
    from rl2f.engines import make_engine
    from rl2f.rollout import RolloutSettings, run_episodes
    from rl2f.teachers import make_teacher

    model_dir = Path(cfg.train.rl2f_dir)
    student = make_engine(cfg.rollout.engine, str(model_dir), dtype=cfg.model.dtype)
    settings = RolloutSettings.from_config(
        cfg,
        num_generations=cfg.rollout.num_generations,
        max_turns=cfg.train.max_turns,
        progress=progress,
    )
    try:
        teacher = make_teacher(cfg.teacher, engine=student if cfg.teacher.kind == "self" else None)
        try:
            for shard in todo:
                episodes = run_episodes(
                    shards[shard],
                    student,  # type: ignore[arg-type]  (a token engine: checked by kind)
                    teacher,
                    settings,
                    policy_name=model_dir.name,
                    # Episode indices (their random streams) as in one call over all tasks.
                    first_index=shard * SHARD_TASKS * settings.num_generations,
                )
                write_episodes(shard_path(scratch, shard), episodes)
                log.info("rollout: shard %d of %d done", shard + 1, len(shards))
            return teacher.engine_stats()
        finally:
            teacher.close()  # the self teacher leaves the student's engine open
    finally:
        student.close()
        settings.close()


def write_outputs(out_dir: str | Path, episodes: list[Episode], summary: dict[str, Any]) -> None:
    """Publish the three files together (readers never see some without the others), then drop
    the finished shards."""
    out_dir = Path(out_dir)
    staging = staging_dir(out_dir)
    write_episodes(staging / EPISODES_FILE, episodes)
    write_episodes_jsonl(staging / EPISODES_JSONL, episodes)
    atomic_write_text(staging / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
    replace_dir(staging, out_dir)
    shutil.rmtree(partial_dir(out_dir), ignore_errors=True)


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
    fix_cpu_threads(cfg.model.cpu_threads)
    episodes, summary = roll_out(cfg)
    write_outputs(cfg.distill.episodes_dir, episodes, summary)
    log_to_mlflow(cfg, episodes, summary)
    print(format_summary(summary))
    log.info("rollout: %d episodes written to %s", len(episodes), cfg.distill.episodes_dir)
    return {"stage": "rollout", "out_dir": cfg.distill.episodes_dir, **summary}
