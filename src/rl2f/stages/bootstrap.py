"""``rl2f bootstrap``: make the embedded default student (``models/base/``), unless
``model.student`` names a real model, in which case that model is the base, nothing is built,
and ``models/base/`` only records which model it is (DVC expects the declared output)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from rl2f.config import Config
from rl2f.cpu_threads import fix_cpu_threads
from rl2f.tasks.io import atomic_write_text, read_tasks

# What ``models/base/`` holds when a real model is the base: its name, for DVC and for people.
STUDENT_FILE = "student.json"

log = logging.getLogger(__name__)


def record_student(student: str, base_dir: Path) -> None:
    """``base_dir`` names the real base model instead of holding a tiny one, so a stale tiny
    model is never mistaken for the base and ``dvc repro -S model.student=...`` finds its
    output."""
    shutil.rmtree(base_dir, ignore_errors=True)
    base_dir.mkdir(parents=True)
    atomic_write_text(base_dir / STUDENT_FILE, json.dumps({"student": student}, indent=2) + "\n")


def run(cfg: Config) -> dict[str, Any] | None:
    """Train the tiny model on the train split and probe it on ``eval_id`` when that file
    exists. Returns the probe metrics, or None when skipped."""
    if cfg.model.student:
        log.info("using %s, skipping bootstrap", cfg.model.student)
        record_student(cfg.model.student, Path(cfg.model.base_dir))
        return None

    from rl2f.training.bootstrap import ProbeSettings, bootstrap_tiny_model

    fix_cpu_threads(cfg.model.cpu_threads)
    data_dir = Path(cfg.data.out_dir)
    train_tasks = read_tasks(data_dir / "train.parquet")
    eval_path = data_dir / "eval_id.parquet"
    eval_tasks = read_tasks(eval_path) if eval_path.exists() else []
    if not eval_tasks:
        log.warning("%s not found or empty: the model is saved without accuracy figures", eval_path)
    # Probe with the sampling the rollouts will use: what RL sees is what matters.
    settings = ProbeSettings(
        followup_message=cfg.teacher.retry_message,
        critique_level=cfg.teacher.level,
        sampling=cfg.rollout.sampling,
        engine=cfg.rollout.engine,
    )
    metrics = bootstrap_tiny_model(
        cfg.model.tiny, train_tasks, eval_tasks, cfg.model.base_dir, settings
    )
    if eval_tasks:
        log.info(
            "%s: first-turn accuracy on eval_id %.1f%% greedy, %.1f%% sampled (n=%d)",
            cfg.model.base_dir,
            100 * metrics["first_turn_accuracy_greedy"],
            100 * metrics["first_turn_accuracy_sampled"],
            metrics["n_eval"],
        )
    return metrics
