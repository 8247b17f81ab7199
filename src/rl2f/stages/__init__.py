"""One function per pipeline stage; the only entry points DVC and Kubeflow use.

Each stage takes the validated :class:`~rl2f.config.Config` and reads and writes the paths it
names. Heavy imports happen inside the stage so ``rl2f --help`` stays fast. Every tracked stage
runs inside its MLflow child run (:func:`rl2f.tracking.stage_run`): the stage logs extras through
:func:`rl2f.tracking.active`, and the summary dict it returns is logged here. A stage that opens
its own runs (evaluate: one per model) is registered with ``tracked=False``.
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
    sections: tuple[str, ...] = ()  # params sections logged on the stage's MLflow run
    tracked: bool = True

    def run(self, cfg: Config) -> object:
        fn: Callable[[Config], object] = importlib.import_module(self.module).run
        if not self.tracked:
            return fn(cfg)
        from rl2f.tracking import log_summary, stage_run

        with stage_run(cfg, self.name, self.sections) as run:
            summary = fn(cfg)
            if run is not None and isinstance(summary, dict):
                log_summary(run, summary)
        return summary


STAGES: dict[str, Stage] = {
    stage.name: stage
    for stage in [
        Stage(
            "prepare", "rl2f.stages.prepare", "build train/eval_id/eval_ood task files", ("data",)
        ),
        Stage(
            "validate",
            "rl2f.stages.validate",
            "check the task files with Great Expectations",
            ("data",),
        ),
        Stage("bootstrap", "rl2f.stages.bootstrap", "make the tiny default student", ("model",)),
        Stage(
            "train_rl2f",
            "rl2f.stages.train_rl2f",
            "GRPO over whole didactic conversations",
            ("train", "rollout", "teacher", "model"),
        ),
        Stage(
            "train_single_turn",
            "rl2f.stages.train_single_turn",
            "single-turn RL baseline",
            ("train", "rollout", "model"),
        ),
        Stage(
            "rollout",
            "rl2f.stages.rollout",
            "didactic episodes of a trained policy with a teacher",
            ("rollout", "teacher"),
        ),
        Stage(
            "distill",
            "rl2f.stages.distill",
            "train the policy to predict teacher critiques",
            ("distill",),
        ),
        Stage(
            "evaluate",
            "rl2f.stages.evaluate",
            "accuracy by turn of every model, split and feedback mode",
            ("eval", "teacher", "rollout"),
            tracked=False,  # one MLflow child run per model, opened by the stage
        ),
        Stage(
            "red_team",
            "rl2f.stages.red_team",
            "scripted hostile students against the privileged teachers (leaks under attack)",
            ("teacher",),
        ),
        Stage("report", "rl2f.stages.report", "the HTML and Markdown report", ("eval",)),
    ]
}
