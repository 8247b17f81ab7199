"""The single-turn RL baseline: same trainer, one turn, no teacher (models/single_turn)."""

from rl2f.config import Config
from rl2f.stages.train import run_training


def run(cfg: Config) -> dict:
    return run_training(cfg, "single_turn")
