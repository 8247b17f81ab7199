"""``distill``: train the RL2F policy to also predict the teacher's critiques (models/rl2f_critic),
so the ``self`` feedback mode can correct itself without a teacher.

Reads the episodes of ``rl2f rollout`` (``distill.episodes_dir``), the task files (to check every
example against its task's privileged answer) and the RL2F policy (``train.rl2f_dir``); writes the
model with a ``distill_summary.json`` to ``distill.out_dir``. The same stage with
``distill.include_critiques=false`` writes the answers-only ablation (dvc stage
``distill_answers_only``, models/rl2f_answers_only).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from rl2f.config import Config
from rl2f.cpu_threads import fix_cpu_threads
from rl2f.episodes import Episode, read_episodes
from rl2f.errors import DataError, UserError
from rl2f.tasks.io import atomic_write_text, read_tasks
from rl2f.tasks.schema import SPLITS, Task, is_eval_split
from rl2f.tracking import active, is_main_process, log_model

log = logging.getLogger(__name__)

EPISODES_FILE = "episodes.parquet"
SUMMARY_FILE = "distill_summary.json"


def all_tasks(tasks_dir: str | Path) -> dict[str, Task]:
    paths = [Path(tasks_dir) / f"{split}.parquet" for split in SPLITS]
    found = [path for path in paths if path.exists()]
    if not found:
        raise DataError(f"{tasks_dir}: no task files (run `rl2f prepare` first)")
    return {task.id: task for path in found for task in read_tasks(path)}


def check_training_episodes(episodes: list[Episode], tasks: dict[str, Task], where: Path) -> None:
    """The critic must not learn from evaluation problems, whatever the config says now: the
    episodes' own split (and their task's, for files written before episodes kept it) decide."""
    for number, episode in enumerate(episodes):
        task = tasks.get(episode.task_id)
        split = next(
            (s for s in (episode.split, task.split if task else "") if is_eval_split(s)), None
        )
        if split is not None:
            raise UserError(
                f"{where}: episode {number} is from the evaluation split {split!r}; distill "
                "trains only on rollouts of the train split (rollout.split)"
            )


def run(cfg: Config) -> dict:
    from rl2f.training.distill import build_examples, train_critic

    fix_cpu_threads(cfg.model.cpu_threads)
    episodes_path = Path(cfg.distill.episodes_dir) / EPISODES_FILE
    if not episodes_path.exists():
        raise UserError(f"{episodes_path}: no episodes (run `rl2f rollout` first)")
    policy_dir = cfg.train.rl2f_dir
    if not Path(policy_dir).is_dir():
        raise UserError(f"{policy_dir}: RL2F policy not found (run `rl2f train_rl2f` first)")
    episodes = read_episodes(episodes_path)
    tasks = all_tasks(cfg.data.out_dir)
    check_training_episodes(episodes, tasks, episodes_path)
    examples = build_examples(cfg, episodes, tasks)
    log.info("distill: %d examples from %d episodes", len(examples), len(episodes))
    summary = train_critic(cfg, examples, policy_dir)
    summary |= {"stage": "distill", "episodes": len(episodes)}
    out_dir = Path(cfg.distill.out_dir)
    if is_main_process():  # under torchrun every rank returns here; rank 0 writes
        atomic_write_text(out_dir / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
    run_ = active()
    if run_ and cfg.tracking.log_models:
        name = "rl2f_critic" if cfg.distill.include_critiques else "rl2f_answers_only"
        log_model(run_, out_dir, name, {})
    return summary
