"""``distill``: train the RL2F policy to also predict the teacher's critiques (models/rl2f_critic),
so the ``self`` feedback mode can correct itself without a teacher."""

from __future__ import annotations

import logging
from pathlib import Path

from rl2f.config import Config
from rl2f.episodes import read_episodes
from rl2f.errors import UserError
from rl2f.tasks.io import read_tasks
from rl2f.tracking import active

log = logging.getLogger(__name__)

EPISODES_FILE = "episodes.parquet"


def run(cfg: Config) -> dict:
    from rl2f.training.distill import build_examples, train_critic

    episodes_path = Path(cfg.distill.episodes_dir) / EPISODES_FILE
    if not episodes_path.exists():
        raise UserError(f"{episodes_path}: no episodes (run `rl2f rollout` first)")
    policy_dir = cfg.train.rl2f_dir
    if not Path(policy_dir).exists():
        raise UserError(f"{policy_dir}: RL2F policy not found (run `rl2f train_rl2f` first)")
    episodes = read_episodes(episodes_path)
    tasks = {
        task.id: task
        for split in ("train", "eval_id", "eval_ood")
        if (Path(cfg.data.out_dir) / f"{split}.parquet").exists()
        for task in read_tasks(Path(cfg.data.out_dir) / f"{split}.parquet")
    }
    examples = build_examples(cfg, episodes, tasks)
    log.info("distill: %d examples from %d episodes", len(examples), len(episodes))
    summary = train_critic(cfg, examples, policy_dir)
    run_ = active()
    if run_ and cfg.tracking.log_models:
        run_.log_artifacts(cfg.distill.out_dir, artifact_path="model")
    return summary
