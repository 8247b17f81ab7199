"""GRPO over whole didactic conversations (RL2F) and its single-turn baseline, on TRL.

TRL's ``rollout_func`` hook hands us the prompts of a step (already repeated G times); we run the
project's own batched multi-turn loop (:func:`rl2f.rollout.run_episodes`) on the live policy and
return the flat conversation: ``completion_ids`` hold every student turn with the teacher's
feedback in between, and ``env_mask`` is 0 on the feedback so teacher tokens carry no loss. The
conversation reward (gamma^(t-1) when solved at turn t) reaches GRPO through a reward function
that reads it back from the rollout's extra fields, and TRL normalises it within each group.

Two options beyond the paper, both off by default:

- per-turn credit (``train.per_turn_credit``): each student turn's tokens get the
  group-normalised return *from that turn* (``train.credit_discount``^(solved_at - t)) instead
  of the conversation reward, so an early wrong turn that the student later fixed is not
  rewarded like the fix (with the default discount 0, not rewarded at all);
- fading teacher (``train.fading_teacher``): the critique level goes diagnostic -> directional
  -> binary over training, so the policy is weaned off detailed hints.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import shutil
import statistics
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch

from rl2f.config import Config, EngineConfig, TeacherConfig
from rl2f.episodes import Episode, Turn
from rl2f.errors import UserError
from rl2f.tasks.schema import Task
from rl2f.training.checkpoints import (
    checkpoint_dir,
    last_complete_checkpoint,
    resumable_checkpoint,
)
from rl2f.training.models import (
    distributed_state,
    load_student,
    lora_config,
    model_identity,
    publish,
    world_size,
)

log = logging.getLogger(__name__)

# Fading teacher: the share of training after which each level takes over.
FADING_SCHEDULE = (("diagnostic", 0.0), ("directional", 1 / 3), ("binary", 2 / 3))
# TRL's GRPO divides by (std + this); per-turn credit normalises the same way.
ADVANTAGE_EPSILON = 1e-4
# Room for the rendered feedback turn (end of turn, the critique, the assistant header), in
# tokens, on top of each student reply: only dr_grpo's loss normaliser reads this length.
FEEDBACK_TOKENS_PER_TURN = 64


@dataclass(frozen=True)
class RunSpec:
    """What differs between the RL2F run and the single-turn baseline."""

    name: str
    out_dir: str
    max_turns: int
    num_generations: int
    learning_rate: float
    frozen_first_attempt: bool = False  # the base writes first attempts; the policy revises


def run_specs(cfg: Config) -> dict[str, RunSpec]:
    """The single-turn baseline samples G x T_max replies per task when
    ``train.single_turn_match_budget`` is set: the generation budget of T_max turns x G. It
    trains at ``train.single_turn_learning_rate`` where that is set."""
    t = cfg.train
    single_g = t.num_generations * t.max_turns if t.single_turn_match_budget else t.num_generations
    single_lr = t.single_turn_learning_rate or t.learning_rate
    return {
        "rl2f": RunSpec(
            "rl2f",
            t.rl2f_dir,
            t.max_turns,
            t.num_generations,
            t.learning_rate,
            t.frozen_first_attempt,
        ),
        "single_turn": RunSpec("single_turn", t.single_turn_dir, 1, single_g, single_lr),
    }


# ---------------------------------------------------------------- rewards and credit
def teacher_level(cfg: Config, progress: float) -> str:
    """The critique level at ``progress`` (0..1) through training."""
    if not cfg.train.fading_teacher:
        return cfg.teacher.level
    level = FADING_SCHEDULE[0][0]
    for name, start in FADING_SCHEDULE:
        if progress >= start:
            level = name
    return level


def turn_returns(
    episode: Episode, gamma: float, progress: float = 0.0, edit: float = 0.0
) -> list[float]:
    """Per-turn credit: the return seen from each student turn. An early wrong turn that the
    student later fixed earns gamma^(distance to the fix), not the whole conversation reward.

    ``progress`` > 0 adds a dense term for what a critique asks of the next attempt: a wrong
    attempt after a wrong one earns +progress when its answer is closer to the correct value
    (the verifier's ``numeric_error``), -progress when it is farther or no longer a number.
    ``edit`` > 0 adds +edit to an attempt that edits the last answer the answer's way
    (:func:`edit_direction`), -edit the other way.
    """
    students = episode.student_turns
    returns = [
        gamma ** (episode.solved_at - t) if episode.solved_at and t <= episode.solved_at else 0.0
        for t in range(1, len(students) + 1)
    ]
    if progress:
        for t in range(1, len(students)):
            if not students[t].correct:
                returns[t] += progress * _closer(students[t - 1], students[t])
    if edit:
        for t in range(1, len(students)):
            returns[t] += edit * edit_direction(students[t - 1], students[t])
    return returns


# A revision that edits the last answer: "-76 - 1 = -77" (the last answer, an operator, an
# amount). The edit base's corpus teaches this form (model.tiny.edit_rate).
_EDIT = re.compile(r"\s*(-?\d+)\s*([+-])\s*\d+\s*=")


def edit_direction(before: Turn, after: Turn) -> int:
    """+1 when ``after`` edits ``before``'s wrong answer with the operator that goes towards
    the correct one (``- 1`` after an answer that was too high), -1 when it goes away, 0 when
    ``after`` is no edit of that answer. Unlike :func:`_closer` it rewards the direction alone,
    which a critique states, and not the amount, which a critique does not."""
    error, match = before.error_from_answer, _EDIT.match(after.text)
    if not error or match is None or before.extracted is None:
        return 0
    try:
        edits_last_answer = int(match.group(1)) == float(before.extracted)
    except ValueError:
        return 0
    if not edits_last_answer:
        return 0
    goes_down = match.group(2) == "-"
    return 1 if goes_down == (error > 0) else -1


def _closer(before: Turn, after: Turn) -> int:
    """+1 when ``after`` is nearer the correct value than ``before``, -1 when farther (or it
    lost the number), 0 when neither can be told."""
    old, new = before.distance_to_answer, after.distance_to_answer
    if new is None:
        return -1 if old is not None else 0
    if old is None:
        return 1
    return (new < old) - (new > old)


def token_turn_index(episode: Episode) -> list[int]:
    """For each completion token, the 0-based index of the student turn it belongs to (teacher
    tokens get the index of the turn they precede; their loss is masked anyway)."""
    index, turn = [], 0
    for item in episode.turns:
        index.extend([turn] * len(item.token_ids))
        if item.role == "student":
            turn += 1
    return [min(i, max(turn - 1, 0)) for i in index]


def _normalised(values: Sequence[float]) -> list[float]:
    """(x - group mean) / (group std + eps), with the sample std TRL's GRPO uses."""
    if len(values) < 2:
        return [0.0] * len(values)
    mean, std = statistics.fmean(values), statistics.stdev(values)
    return [(value - mean) / (std + ADVANTAGE_EPSILON) for value in values]


def per_turn_advantages(
    episodes: Sequence[Episode],
    gamma: float,
    num_generations: int,
    width: int,
    progress: float = 0.0,
    positive_only_after_first: bool = False,
    edit: float = 0.0,
) -> torch.Tensor:
    """Token-level advantages of shape (episodes, width) for per-turn credit.

    Within each group of ``num_generations`` consecutive episodes (TRL's layout), the returns of
    turn t are normalised over the episodes that reached turn t, and every token of that student
    turn gets its episode's value. Teacher tokens and padding get 0 (they carry no loss anyway).
    With ``positive_only_after_first``, later turns only reinforce what worked: a wrong revision
    is mostly right arithmetic with a wrong result, and pushing all of it down also erodes the
    first-turn skill the turns share.
    """
    if len(episodes) % num_generations:
        raise ValueError(f"{len(episodes)} episodes do not split into groups of {num_generations}")
    advantages = torch.zeros(len(episodes), width)
    returns = [turn_returns(episode, gamma, progress, edit) for episode in episodes]
    student_turn = [
        torch.tensor(
            [
                turn if is_student else -1
                for turn, is_student in zip(
                    token_turn_index(episode), episode.completion_mask, strict=True
                )
            ],
            dtype=torch.long,
        )
        for episode in episodes
    ]
    for start in range(0, len(episodes), num_generations):
        group = range(start, start + num_generations)
        for turn in range(max(len(returns[i]) for i in group)):
            reached = [i for i in group if turn < len(returns[i])]
            values = _normalised([returns[i][turn] for i in reached])
            if turn and positive_only_after_first:
                values = [max(value, 0.0) for value in values]
            for i, value in zip(reached, values, strict=True):
                columns = (student_turn[i] == turn).nonzero().flatten()
                advantages[i, columns] = value
    return advantages


def conversation_reward(
    completions: list, conversation_reward: list[float], **_: Any
) -> list[float]:
    """GRPO reward: the discounted conversation reward computed by the rollout."""
    return [float(r) for r in conversation_reward]


# ---------------------------------------------------------------- the rollout hook
class ConversationRollout:
    """The ``rollout_func`` TRL calls each generation step.

    Keeps the last batch of episodes (per-turn credit reads them) and the time spent rolling out
    (logged as ``rollout/seconds``, so generation and optimisation time can be told apart).
    """

    def __init__(self, cfg: Config, spec: RunSpec, tasks: Sequence[Task], tokenizer: Any) -> None:
        from rl2f.rollout import RolloutSettings

        self.cfg, self.spec, self.tokenizer = cfg, spec, tokenizer
        self.by_prompt = {task.prompt: task for task in tasks}
        # The trainer already repeated each prompt G times: one episode per entry keeps TRL's
        # group layout (G consecutive completions per prompt). The seed changes every step.
        self.settings = RolloutSettings.from_config(
            cfg, num_generations=1, max_turns=spec.max_turns, progress=False
        )
        self.first_attempt = None  # the frozen base's engine (spec.frozen_first_attempt)
        if spec.frozen_first_attempt:
            from rl2f.engines import make_engine

            self.first_attempt = make_engine(
                cfg.rollout.engine.model_copy(update={"kind": "transformers"}),
                cfg.model.base_path,
                tokenizer,
                dtype=cfg.model.dtype,
            )
        self.last_episodes: list[Episode] = []
        self.seconds = 0.0
        self.student_tokens = 0
        self._teachers: dict[str, Any] = {}
        self._metrics: defaultdict[str, list[float]] = defaultdict(list)

    def _teacher(self, level: str, student: Any):  # noqa: ANN202
        from rl2f.teachers import make_teacher

        teacher_cfg: TeacherConfig = self.cfg.teacher.model_copy(update={"level": level})
        if teacher_cfg.kind == "self":  # the live policy critiques itself: never cached
            return make_teacher(teacher_cfg, engine=student)
        if level not in self._teachers:
            self._teachers[level] = make_teacher(teacher_cfg)
        return self._teachers[level]

    def __call__(self, prompts: list[Any], trainer: Any) -> dict[str, list]:
        from rl2f.rollout import run_episodes

        started = time.perf_counter()
        try:
            tasks = [self.by_prompt[_prompt_text(p)] for p in prompts]
        except KeyError as exc:
            raise RuntimeError(f"rollout_func got a prompt of no training task: {exc}") from None
        student = self.student_engine(trainer)
        step = trainer.state.global_step
        level = teacher_level(self.cfg, step / max(trainer.state.max_steps or 1, 1))
        # One seed per (run seed, step, process): a resumed run samples what the uninterrupted
        # run would have, and data-parallel processes do not draw the same numbers.
        seed = (self.cfg.train.seed * 100_003 + step) * 1_009 + trainer.accelerator.process_index
        sampling = self.cfg.rollout.sampling.model_copy(update={"seed": seed})
        episodes = run_episodes(
            tasks,
            student,
            self._teacher(level, student),
            replace(self.settings, sampling=sampling),
            policy_name=self.spec.name,
        )
        self.last_episodes = episodes
        elapsed = time.perf_counter() - started
        tokens = sum(sum(e.completion_mask) for e in episodes)
        step_metrics = _across_processes(
            self._step_metrics(episodes, level, elapsed, tokens), trainer.accelerator
        )
        self.seconds += step_metrics["rollout/seconds"]
        self.student_tokens += int(step_metrics["rollout/student_tokens"])
        for key, value in step_metrics.items():
            self._metrics[key].append(value)
        masks = [e.completion_mask for e in episodes]
        if self.first_attempt is not None:  # the frozen model's first attempt is not trained
            masks = [_without_first_attempt(e) for e in episodes]
        return {
            "prompt_ids": [e.prompt_ids for e in episodes],
            "completion_ids": [e.completion_ids for e in episodes],
            "logprobs": [e.completion_logprobs for e in episodes],
            "env_mask": masks,
            "conversation_reward": [e.reward for e in episodes],
        }

    def student_engine(self, trainer: Any):  # noqa: ANN201
        """The live policy as a token engine: TRL's colocated vLLM when ``train.use_vllm`` (its
        weights were synced from the policy before this step), else transformers' generate on
        the policy itself."""
        model = trainer.accelerator.unwrap_model(trainer.model)
        if trainer.use_vllm:
            from rl2f.engines.vllm_engine import VLLMEngine

            llm = trainer.vllm_generation.llm
            return self._with_first_attempt(
                VLLMEngine.wrap(llm, self.tokenizer, model.generation_config)
            )
        from rl2f.engines import make_engine

        engine_cfg = EngineConfig(
            kind="transformers", batch_size=self.cfg.rollout.engine.batch_size
        )
        return self._with_first_attempt(make_engine(engine_cfg, model, self.tokenizer))

    def _with_first_attempt(self, policy: Any):  # noqa: ANN202
        if self.first_attempt is None:
            return policy
        from rl2f.engines.revision import RevisionEngine

        return RevisionEngine(self.first_attempt, policy)

    def _step_metrics(
        self, episodes: list[Episode], level: str, seconds: float, tokens: int
    ) -> dict[str, float]:
        """This process's rollout metrics of one step (see :func:`_across_processes`)."""
        metrics: dict[str, float] = {}
        for turn in range(1, self.spec.max_turns + 1):
            solved = sum(e.solved_at is not None and e.solved_at <= turn for e in episodes)
            metrics[f"rollout/acc_turn_{turn}"] = solved / len(episodes)
        metrics["rollout/student_turns"] = statistics.fmean(len(e.student_turns) for e in episodes)
        teacher_turns = [t for e in episodes for t in e.teacher_turns]
        metrics["rollout/leaks_rejected"] = float(sum(t.leaked_attempts for t in teacher_turns))
        metrics["rollout/fallbacks"] = float(sum(t.fell_back for t in teacher_turns))
        metrics["rollout/teacher_level"] = float([name for name, _ in FADING_SCHEDULE].index(level))
        metrics["rollout/seconds"] = seconds
        metrics["rollout/student_tokens"] = float(tokens)
        metrics["rollout/episodes"] = float(len(episodes))
        return metrics

    def pop_metrics(self) -> dict[str, float]:
        """The mean of each rollout metric since the last call (one call per logging step)."""
        means = {key: statistics.fmean(values) for key, values in self._metrics.items() if values}
        self._metrics.clear()
        return means

    def close(self) -> None:
        for teacher in self._teachers.values():
            teacher.close()
        if self.first_attempt is not None:
            self.first_attempt.close()
        self.settings.close()


def _without_first_attempt(episode: Episode) -> list[int]:
    """The episode's loss mask with its first attempt (the first completion tokens) off."""
    first = len(episode.turns[0].token_ids) if episode.turns else 0
    return [0] * first + list(episode.completion_mask[first:])


# Rollout metrics that add up over data-parallel processes, and the one that is a wall time;
# the rest are means over equal-sized local batches, so their mean is the global mean.
_SUMMED_METRICS = frozenset(
    {"rollout/leaks_rejected", "rollout/fallbacks", "rollout/student_tokens", "rollout/episodes"}
)


def _across_processes(metrics: dict[str, float], accelerator: Any) -> dict[str, float]:
    """One step's rollout metrics over all processes (every process rolls out its own share of
    the step's conversations, and only rank 0 logs)."""
    if accelerator.num_processes == 1:
        return metrics
    from accelerate.utils import gather_object

    every = gather_object([metrics])
    combined = {}
    for key in metrics:
        values = [m[key] for m in every]
        if key in _SUMMED_METRICS:
            combined[key] = float(sum(values))
        elif key == "rollout/seconds":
            combined[key] = max(values)  # the step waits for the slowest process
        else:
            combined[key] = statistics.fmean(values)
    return combined


def _prompt_text(prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt
    return prompt[-1]["content"]  # conversational datasets: the user message


# ---------------------------------------------------------------- the trainer
def make_trainer_class(per_turn_credit: bool):  # noqa: ANN201
    """TRL's GRPOTrainer with the rollout's metrics in its logs, or its per-turn credit variant
    (token-level advantages)."""
    from trl import GRPOTrainer

    class ConversationGRPOTrainer(GRPOTrainer):
        """Adds the rollout's own metrics (accuracy by turn, leaks, timing) to every log through
        ``Trainer.log``, the method Transformers documents for injecting what gets logged; TRL's
        ``log`` then adds its own and hands both to MLflow and the console."""

        def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
            if self.model.training and isinstance(self.rollout_func, ConversationRollout):
                logs = {**logs, **self.rollout_func.pop_metrics()}
            super().log(logs, start_time)

    if not per_turn_credit:
        return ConversationGRPOTrainer

    class PerTurnCreditGRPOTrainer(ConversationGRPOTrainer):
        """Replaces TRL's sequence-level advantages with :func:`per_turn_advantages` (TRL's loss
        accepts advantages of shape (B, T)). TRL has no public hook for advantages, so this
        wraps ``_generate_and_score_completions``; tests pin what it must return."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            # Each process only sees its own episodes. TRL's RepeatSampler yields the G copies
            # of a prompt consecutively and accelerate hands each process a contiguous slice of
            # per_device_train_batch_size x steps_per_generation of that stream, so the groups
            # are process-local exactly when that slice is a multiple of G.
            local = self.args.per_device_train_batch_size * self.args.steps_per_generation
            if local % self.num_generations:
                processes = self.accelerator.num_processes
                raise UserError(
                    f"train.per_turn_credit: {local} conversations per process do not hold whole "
                    f"groups of {self.num_generations}; on {processes} processes set "
                    f"train.tasks_per_step to a multiple of {processes}"
                )

        def _generate_and_score_completions(self, inputs):  # noqa: ANN001, ANN202
            output = super()._generate_and_score_completions(inputs)
            rollout: ConversationRollout = self.rollout_func
            episodes, size = rollout.last_episodes, self.num_generations
            for start in range(0, len(episodes), size):
                if len({e.task_id for e in episodes[start : start + size]}) != 1:
                    raise RuntimeError(
                        f"per-turn credit: episodes {start}..{start + size - 1} of process "
                        f"{self.accelerator.process_index} are not one group of one task"
                    )
            advantages = per_turn_advantages(
                episodes,
                rollout.cfg.train.credit_discount,
                self.num_generations,
                output["completion_ids"].shape[1],
                progress=rollout.cfg.train.progress_reward,
                positive_only_after_first=rollout.cfg.train.later_turns_positive_only,
                edit=rollout.cfg.train.edit_reward,
            )
            output["advantages"] = advantages.to(output["advantages"].device)
            return output

    return PerTurnCreditGRPOTrainer


def grpo_config(cfg: Config, spec: RunSpec, report_to: list[str]):  # noqa: ANN201
    from trl import GRPOConfig

    t, sampling = cfg.train, cfg.rollout.sampling
    samples_per_step = t.tasks_per_step * spec.num_generations
    if samples_per_step % world_size():
        raise UserError(
            f"train.tasks_per_step x num_generations = {samples_per_step} conversations per step "
            f"do not split over {world_size()} processes"
        )
    warmup_steps = math.ceil(t.steps * t.warmup_ratio)
    scheduler = t.lr_scheduler
    if scheduler == "constant" and warmup_steps:
        scheduler = "constant_with_warmup"  # plain "constant" ignores warmup
    cuda = torch.cuda.is_available()
    if t.use_vllm and not cuda:
        raise UserError("train.use_vllm: vLLM generation needs a CUDA GPU (none is visible)")
    return GRPOConfig(
        output_dir=str(checkpoint_dir(spec.out_dir)),
        max_steps=t.steps,
        learning_rate=spec.learning_rate,
        lr_scheduler_type=scheduler,
        warmup_steps=warmup_steps,
        max_grad_norm=t.max_grad_norm,
        per_device_train_batch_size=samples_per_step // world_size(),
        gradient_accumulation_steps=1,
        num_generations=spec.num_generations,
        max_completion_length=spec.max_turns * (sampling.max_new_tokens + FEEDBACK_TOKENS_PER_TURN),
        # The loss recomputes log-probs at this temperature: it must be the sampling one.
        temperature=max(sampling.temperature, 1e-5),
        top_p=sampling.top_p,
        beta=t.kl_beta,
        loss_type=t.loss_type,
        mask_truncated_completions=False,  # a conversation cut at max_new_tokens still counts
        gradient_checkpointing=False,  # small models; recomputation only costs time here
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=2,
        logging_steps=1,
        report_to=report_to,
        seed=t.seed,
        data_seed=t.seed,
        use_cpu=not cuda,
        bf16=cuda and torch.cuda.is_bf16_supported(),
        remove_unused_columns=False,
        shuffle_dataset=True,
        disable_tqdm=False,
        # TRL builds the colocated vLLM and syncs the policy's weights into it before each
        # rollout_func call; ConversationRollout samples through it (see student_engine).
        use_vllm=t.use_vllm,
        vllm_mode="colocate",
        vllm_gpu_memory_utilization=t.vllm_gpu_memory_utilization,
    )


def run_settings(cfg: Config, spec: RunSpec, tasks: Sequence[Task]) -> dict[str, Any]:
    """What decides a run's result: a checkpoint is resumed only under the same settings."""
    return {
        "spec": asdict(spec),
        "train": cfg.train.model_dump(mode="json", exclude={"save_steps"}),
        "rollout": cfg.rollout.model_dump(mode="json", include={"gamma", "sampling"}),
        "teacher": cfg.teacher.model_dump(mode="json"),
        "model": model_identity(cfg.model.base_path) | {"dtype": cfg.model.dtype},
        "tasks": hashlib.sha256("\n".join(t.id for t in tasks).encode()).hexdigest(),
    }


def build_trainer(
    cfg: Config, spec: RunSpec, tasks: Sequence[Task], report_to: list[str]
) -> tuple[Any, ConversationRollout]:
    """The GRPO trainer of ``spec`` over ``tasks`` and its rollout hook, ready to train."""
    from datasets import Dataset

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    model, tokenizer = load_student(cfg)
    prompts = list(dict.fromkeys(task.prompt for task in tasks))
    rollout = ConversationRollout(cfg, spec, tasks, tokenizer)
    trainer_class = make_trainer_class(cfg.train.per_turn_credit and spec.max_turns > 1)
    trainer = trainer_class(
        model=model,
        reward_funcs=[conversation_reward],
        args=grpo_config(cfg, spec, report_to),
        train_dataset=Dataset.from_dict({"prompt": prompts}),
        processing_class=tokenizer,
        peft_config=lora_config(cfg),
        rollout_func=rollout,
    )
    return trainer, rollout


def train(
    cfg: Config, spec: RunSpec, tasks: Sequence[Task], report_to: list[str]
) -> dict[str, Any]:
    """Train ``spec`` with GRPO and publish the model to ``spec.out_dir``.

    Checkpoints every ``train.save_steps`` steps into ``<out_dir>.checkpoints``; a rerun after an
    interruption resumes from the last complete one (when the settings are unchanged), and the
    checkpoints are deleted once the model is published.
    """
    if not tasks:
        raise UserError("train: no training tasks (data/tasks/train.parquet is empty)")
    state = distributed_state()
    work_dir = checkpoint_dir(spec.out_dir)
    if state.is_main_process:
        resumable_checkpoint(work_dir, run_settings(cfg, spec, tasks))
    state.wait_for_everyone()
    resume = last_complete_checkpoint(work_dir)
    trainer, rollout = build_trainer(cfg, spec, tasks, report_to)
    if resume:
        log.info("resuming %s from %s", spec.name, resume)
    started = time.perf_counter()
    try:
        result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    finally:
        rollout.close()
    seconds = time.perf_counter() - started
    if state.is_main_process:
        publish(
            trainer,
            rollout.tokenizer,
            spec.out_dir,
            merge_lora=cfg.train.lora,
            first_attempt=cfg.model.base_path if spec.frozen_first_attempt else None,
        )
        shutil.rmtree(work_dir, ignore_errors=True)
    state.wait_for_everyone()
    history = [row for row in trainer.state.log_history if "loss" in row]
    return {
        "steps": trainer.state.global_step,
        "train_loss": None if math.isnan(result.training_loss) else result.training_loss,
        "final_reward": history[-1].get("reward") if history else None,
        "resumed_from": str(resume) if resume else None,
        "train_seconds": seconds,
        "rollout_seconds": rollout.seconds,
        "student_tokens": rollout.student_tokens,
    }
