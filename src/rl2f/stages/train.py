"""``train_rl2f`` and ``train_single_turn``: one trainer, two run specs (see rl2f.training.grpo)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from rl2f.config import Config
from rl2f.tasks.io import atomic_write_text, read_tasks
from rl2f.tracking import active

log = logging.getLogger(__name__)


def run_training(cfg: Config, which: str) -> dict:
    from rl2f.training.grpo import run_specs, train

    spec = run_specs(cfg)[which]
    tasks = read_tasks(Path(cfg.data.out_dir) / "train.parquet")
    if cfg.train.max_tasks:
        tasks = tasks[: cfg.train.max_tasks]
    stage = f"train_{which}"
    run = active()
    summary = train(cfg, spec, tasks, report_to=["mlflow"] if run else ["none"])
    summary |= {"stage": stage, "tasks": len(tasks), "num_generations": spec.num_generations}
    if run and cfg.tracking.log_models:
        run.log_artifacts(spec.out_dir, artifact_path="model")
    atomic_write_text(Path(spec.out_dir) / "training_summary.json", json.dumps(summary, indent=2))
    log.info("%s: %s", stage, summary)
    return summary
