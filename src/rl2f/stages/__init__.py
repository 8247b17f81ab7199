"""One function per pipeline stage; the only entry points DVC and Kubeflow use.

Each stage takes the validated :class:`~rl2f.config.Config` and reads and writes the paths it
names. Heavy imports happen inside the stage so ``rl2f --help`` stays fast.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from rl2f.config import Config


@dataclass(frozen=True)
class Stage:
    name: str
    module: str
    help: str

    def run(self, cfg: Config) -> object:
        fn: Callable[[Config], object] = importlib.import_module(self.module).run
        return fn(cfg)


STAGES: dict[str, Stage] = {
    stage.name: stage
    for stage in [
        Stage("prepare", "rl2f.stages.prepare", "build train/eval_id/eval_ood task files"),
        Stage("validate", "rl2f.stages.validate", "check the task files with Great Expectations"),
    ]
}
