"""``train_rl2f`` and ``train_single_turn``: one trainer, two run specs (see rl2f.training.grpo).

Reads ``<data.out_dir>/train.parquet`` and the base model, trains with GRPO, and writes the model
with a ``training_summary.json`` to ``train.rl2f_dir`` or ``train.single_turn_dir``. Inside a
tracked stage run TRL reports its scalars and our ``rollout/*`` metrics to MLflow, and the final
model is logged as the run's ``model`` artifact. Launched on several processes (torchrun,
``accelerate launch``; docs/scale-out.md), only rank 0 writes the outputs and logs to MLflow.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Literal

from rl2f.config import Config
from rl2f.cpu_threads import fix_cpu_threads
from rl2f.errors import DataError
from rl2f.tasks.io import atomic_write_text, read_tasks
from rl2f.tracking import active, is_main_process, log_model

log = logging.getLogger(__name__)

SUMMARY_FILE = "training_summary.json"


def run_training(cfg: Config, which: Literal["rl2f", "single_turn"]) -> dict:
    from rl2f.training.grpo import run_specs, train

    fix_cpu_threads(cfg.model.cpu_threads)
    spec = run_specs(cfg)[which]
    tasks_path = Path(cfg.data.out_dir) / "train.parquet"
    tasks = read_tasks(tasks_path)[: cfg.train.max_tasks]
    if not tasks:
        raise DataError(f"{tasks_path}: holds no training tasks")
    stage = f"train_{which}"
    run = active()
    summary = train(cfg, spec, tasks, report_to=["mlflow"] if run else ["none"])
    summary |= {
        "stage": stage,
        "tasks": len(tasks),
        "max_turns": spec.max_turns,
        "num_generations": spec.num_generations,
    }
    if is_main_process():  # under torchrun every rank returns here; rank 0 writes
        atomic_write_text(Path(spec.out_dir) / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
    if run and cfg.tracking.log_models:
        log_model(run, spec.out_dir, which, {"training": tasks_path})
    log.info("%s: %s", stage, summary)
    return summary
