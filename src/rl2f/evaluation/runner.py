"""Rolling out the evaluation: which models, which splits, which feedback modes, and the episodes
of every (model, split, mode) cell.

Fixed seeds make cells comparable: every cell samples with ``eval.seed``, so within a model the
turn-1 answers are the same under every feedback mode and the modes differ only by what the
student is told after a wrong answer.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar

from rl2f.config import Config, SamplingConfig
from rl2f.engines.base import Message, TokenEngine
from rl2f.episodes import Episode
from rl2f.errors import UserError
from rl2f.rollout import RolloutSettings
from rl2f.tasks.io import read_tasks
from rl2f.tasks.schema import Task, ood_split_of
from rl2f.teachers import make_teacher
from rl2f.teachers.base import Teacher

log = logging.getLogger(__name__)

BUILTIN_MODELS = ("base", "single_turn", "rl2f", "rl2f_critic")
# The stage that writes each built-in model, for the "not found" message.
PRODUCED_BY = {
    "base": "bootstrap",
    "single_turn": "train_single_turn",
    "rl2f": "train_rl2f",
    "rl2f_critic": "distill",
}
ID_SPLIT = "eval_id"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


# ---------------------------------------------------------------- models
def builtin_model_path(cfg: Config, name: str) -> str:
    return {
        "base": cfg.model.base_path,
        "single_turn": cfg.train.single_turn_dir,
        "rl2f": cfg.train.rl2f_dir,
        "rl2f_critic": cfg.distill.out_dir,
    }[name]


def model_sources(cfg: Config) -> dict[str, str]:
    """Name -> local directory or hub id of every model to evaluate: ``eval.models`` in order,
    then the ``eval.extra_models`` not already listed. Fails, naming the model, on one that is
    unknown or whose directory does not exist."""
    extra = cfg.eval.extra_models
    names = list(dict.fromkeys([*cfg.eval.models, *extra]))
    if not names:
        raise UserError("eval.models: no model to evaluate")
    sources = {}
    for name in names:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise UserError(f"eval.models: model name {name!r} may use only letters, digits, _ . -")
        if name in extra:
            source = extra[name]
            if not Path(source).exists() and not _HUB_ID.match(source):
                raise UserError(
                    f"eval.extra_models.{name}: {source} is neither a directory nor a hub id"
                )
        elif name in BUILTIN_MODELS:
            source = builtin_model_path(cfg, name)
            is_hub_student = name == "base" and cfg.model.student is not None
            if not is_hub_student and not Path(source).is_dir():
                raise UserError(
                    f"eval.models: model {name!r} not found at {source} (run `rl2f "
                    f"{PRODUCED_BY[name]}` first, or remove it from eval.models)"
                )
        else:
            known = ", ".join([*BUILTIN_MODELS, *extra])
            raise UserError(
                f"eval.models: unknown model {name!r} (known: {known}; add others under "
                "eval.extra_models)"
            )
        sources[name] = source
    return sources


# ---------------------------------------------------------------- splits
@dataclass(frozen=True)
class EvalSplit:
    name: str  # eval_id, or ood_<domain>
    tasks: list[Task]
    max_turns: int


def select_tasks(tasks: Sequence[Task], max_tasks: int | None) -> list[Task]:
    """The first ``max_tasks`` by task id: ids are content hashes, so this is a fixed pseudo-random
    sample that does not depend on file order and only grows when the cap grows."""
    ordered = sorted(tasks, key=lambda task: task.id)
    return ordered[:max_tasks] if max_tasks else ordered


def load_eval_splits(cfg: Config) -> list[EvalSplit]:
    """``eval_id`` and one split per out-of-distribution group (``ood_<domain>``, or the
    source's ``eval_split``), each capped at ``eval.max_tasks``; empty splits are left out."""
    tasks_dir = Path(cfg.data.out_dir)
    splits = [EvalSplit(ID_SPLIT, read_tasks(tasks_dir / "eval_id.parquet"), cfg.eval.max_turns_id)]
    by_split: dict[str, list[Task]] = defaultdict(list)
    for task in read_tasks(tasks_dir / "eval_ood.parquet"):
        by_split[ood_split_of(task)].append(task)
    for name in sorted(by_split):
        splits.append(EvalSplit(name, by_split[name], cfg.eval.max_turns_ood))
    selected = [
        EvalSplit(s.name, select_tasks(s.tasks, cfg.eval.max_tasks), s.max_turns)
        for s in splits
        if s.tasks
    ]
    for split in splits:
        if not split.tasks:
            log.warning("%s: no tasks, split not evaluated", split.name)
    if not selected:
        raise UserError(f"{tasks_dir}: no evaluation tasks (eval_id and eval_ood are empty)")
    return selected


# ---------------------------------------------------------------- feedback modes
def llm_teacher_configured(cfg: Config) -> bool:
    return bool(cfg.teacher.model or cfg.teacher.engine.model)


def check_modes(cfg: Config) -> list[str]:
    modes = list(dict.fromkeys(cfg.eval.feedback_modes))
    if not modes:
        raise UserError("eval.feedback_modes: no feedback mode to evaluate")
    if "llm" in modes and not llm_teacher_configured(cfg):
        raise UserError(
            "eval.feedback_modes includes llm, but no LLM teacher is configured "
            "(set teacher.model or teacher.engine.model)"
        )
    return modes


def modes_for_model(cfg: Config, name: str, modes: list[str]) -> list[str]:
    """The feedback modes ``name`` is evaluated under: an extra model (``eval.extra_models``, e.g.
    an ablation) gets only the ``modes`` that ``eval.extra_model_modes`` names, so it costs just
    the cells its comparisons need; a built-in model, or any model when that list is empty,
    gets them all."""
    wanted = cfg.eval.extra_model_modes
    if name not in cfg.eval.extra_models or not wanted:
        return modes
    chosen = [mode for mode in modes if mode in wanted]
    if not chosen:
        raise UserError(
            f"eval.extra_model_modes: none of {wanted} is in eval.feedback_modes {modes} "
            f"(extra model {name!r} would have no cell)"
        )
    return chosen


class TeacherPool:
    """Builds each mode's teacher. The LLM teacher's engine is built once and shared by every
    evaluated model; the ``self`` teacher is the student being evaluated."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self._llm: Teacher | None = None

    def for_mode(self, mode: str, student: TokenEngine) -> Teacher:
        teacher_cfg = self.cfg.teacher
        if mode == "teacher":
            # The privileged teacher of params.yaml; a non-privileged kind there (self, retry)
            # has its own mode, so "teacher" falls back to the oracle.
            if teacher_cfg.kind == "llm":
                return self._llm_teacher()
            return make_teacher(teacher_cfg.model_copy(update={"kind": "oracle"}))
        if mode == "llm":
            return self._llm_teacher()
        if mode == "self":
            self_cfg = teacher_cfg.model_copy(update={"kind": "self"})
            return make_teacher(self_cfg, engine=ContextFittedChat(student))
        if mode == "retry":
            return make_teacher(teacher_cfg.model_copy(update={"kind": "retry"}))
        raise UserError(f"eval.feedback_modes: unknown mode {mode!r}")

    def _llm_teacher(self) -> Teacher:
        if self._llm is None:
            self._llm = make_teacher(self.cfg.teacher.model_copy(update={"kind": "llm"}))
        return self._llm

    def engine_stats(self) -> dict[str, int]:
        """The shared LLM teacher engine's counters (retries, rate limits, failures)."""
        return self._llm.engine_stats() if self._llm is not None else {}

    def close(self) -> None:
        if self._llm is not None:
            self._llm.close()


# ---------------------------------------------------------------- context
class ContextFittedChat:
    """The student's engine as the ``self`` teacher uses it.

    Self-critique conditions on the whole public conversation, which can outgrow a small
    model's context before the student's own next attempt would. Such a request gets an empty
    reply, which the self teacher replaces with its fixed fallback message, instead of failing
    the batch. It keeps its position in the call (a one-word conversation stands in for it), so
    every other critique is sampled exactly as it would have been: engines seed request i of a
    call from (seed, i).
    """

    STAND_IN: ClassVar[list[Message]] = [{"role": "user", "content": "."}]

    def __init__(self, engine: TokenEngine) -> None:
        from rl2f.rollout import ChatTurns

        self.engine = engine
        self.context_length: int | None = getattr(engine, "context_length", None)
        self._chat = ChatTurns(engine.tokenizer)

    def fits(self, conversation: list[Message], max_new_tokens: int) -> bool:
        if self.context_length is None:
            return True
        return len(self._chat.prompt_ids(conversation)) + max_new_tokens <= self.context_length

    def chat(self, conversations: list[list[Message]], sampling: SamplingConfig) -> list[str]:
        fits = [self.fits(c, sampling.max_new_tokens) for c in conversations]
        if all(fits):
            return self.engine.chat(conversations, sampling)
        log.warning(
            "self-critique: %d of %d request(s) do not fit the model's context; the fallback "
            "message is sent instead",
            fits.count(False),
            len(fits),
        )
        if not any(fits):
            return ["" for _ in conversations]
        requests = [c if fit else self.STAND_IN for c, fit in zip(conversations, fits, strict=True)]
        replies = self.engine.chat(requests, sampling)
        return [reply if fit else "" for reply, fit in zip(replies, fits, strict=True)]

    def close(self) -> None:
        """The student's engine belongs to the evaluation loop, which closes it."""


def split_by_context(
    tasks: Sequence[Task], student: TokenEngine, max_new_tokens: int
) -> tuple[list[Task], list[Task]]:
    """Tasks whose prompt leaves room for one attempt in the student's context, and the others.

    Small models have small contexts (the tiny default: 1024 positions, while one OOD prompt
    can take 900). The rollout ends an episode that outgrows the context, but refuses a prompt
    that cannot take even one attempt; such tasks are left out of that model's evaluation and
    counted, instead of failing every other cell."""
    from rl2f.rollout import ChatTurns

    limit = getattr(student, "context_length", None)
    if limit is None:
        return list(tasks), []
    chat = ChatTurns(student.tokenizer)
    fit, skipped = [], []
    for task in tasks:
        prompt = chat.prompt_ids([{"role": "user", "content": task.prompt}])
        (fit if len(prompt) + max_new_tokens <= limit else skipped).append(task)
    return fit, skipped


# ---------------------------------------------------------------- rollouts
@dataclass
class Cell:
    """The episodes of one (model, split, mode)."""

    model: str
    split: str
    mode: str
    max_turns: int
    leak_checked: bool  # the leak guard checked this mode's critiques (privileged teachers)
    episodes: list[Episode]
    probes: list[Episode] = field(default_factory=list)
    skipped_tasks: int = 0  # tasks whose prompt alone fills the model's context


def eval_settings(cfg: Config, progress: bool = True) -> RolloutSettings:
    """The evaluation's rollout: ``eval.num_generations`` episodes per task under the fixed
    ``eval.seed`` (each split sets its own number of turns)."""
    return RolloutSettings.from_config(
        cfg,
        num_generations=cfg.eval.num_generations,
        max_turns=1,
        sampling=cfg.rollout.sampling.model_copy(update={"seed": cfg.eval.seed}),
        progress=progress,
    )


def evaluate_model(
    model: str,
    student: TokenEngine,
    splits: Sequence[EvalSplit],
    modes: Sequence[str],
    teachers: Callable[[str, TokenEngine], Teacher],
    settings: RolloutSettings,
    *,
    sycophancy_probe: bool,
    wanted: Callable[[str, str], bool] = lambda split, mode: True,
) -> Iterator[Cell]:
    """Roll out every (split, mode) cell of one model that is ``wanted`` (a rerun after a crash
    skips the finished ones), yielding each as it finishes."""
    from rl2f.evaluation.probe import sycophancy_probe as run_probe
    from rl2f.rollout import run_episodes

    for split in splits:
        todo = [mode for mode in modes if wanted(split.name, mode)]
        if not todo:
            continue
        tasks, skipped = split_by_context(split.tasks, student, settings.sampling.max_new_tokens)
        if skipped:
            log.warning(
                "%s/%s: %d of %d task(s) do not fit the model's context, left out",
                model,
                split.name,
                len(skipped),
                len(split.tasks),
            )
        if not tasks:
            continue
        for mode in todo:
            teacher = teachers(mode, student)
            episodes = run_episodes(
                tasks,
                student,
                teacher,
                replace(settings, max_turns=split.max_turns),
                policy_name=model,
            )
            probes = (
                run_probe(episodes, tasks, student, teacher, settings.sampling)
                if sycophancy_probe
                else []
            )
            yield Cell(
                model=model,
                split=split.name,
                mode=mode,
                max_turns=split.max_turns,
                leak_checked=teacher.privileged,
                episodes=episodes,
                probes=probes,
                skipped_tasks=len(skipped),
            )
