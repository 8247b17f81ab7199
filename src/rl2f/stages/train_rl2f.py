"""GRPO over whole didactic conversations: the RL2F policy (models/rl2f)."""

from rl2f.config import Config
from rl2f.stages.train import run_training


def run(cfg: Config) -> dict:
    return run_training(cfg, "rl2f")
