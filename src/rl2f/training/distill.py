"""Critique distillation: teach the policy to predict the teacher's critique from public context.

An example's input is what the student could see (the problem, its attempts, earlier critiques)
followed by the self-critique request; its target is the privileged teacher's critique. The
privileged answer never enters an input: the teacher wrote the critique with it, but the leak
guard already kept it out of the critique, and every example is checked again here. Student turns
of solved episodes are mixed in so the model keeps its student skill. Loss falls on the target
only (TRL's prompt/completion format with ``completion_only_loss``). With
``distill.include_critiques`` false only those student turns remain: plain fine-tuning on its own
correct answers, the ablation that tells what critique learning adds beyond it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from rl2f.config import Config
from rl2f.engines.base import Message
from rl2f.engines.revision import first_attempt_dir
from rl2f.episodes import Episode
from rl2f.errors import DataError, UserError
from rl2f.tasks.schema import Task
from rl2f.teachers.self_critic import self_critique_messages

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Example:
    prompt: list[Message]
    completion: list[Message]
    kind: Literal["critique", "student"]
    task_id: str


def _role(turn_role: str) -> str:
    return "assistant" if turn_role == "student" else "user"


def critique_examples(
    episode: Episode, problem: str, template: str, only_followed_by_fix: bool
) -> list[Example]:
    """One example per teacher critique: the public conversation up to the attempt it answers,
    the self-critique request, and the critique as target. Fallback messages are not critiques;
    with ``only_followed_by_fix`` only critiques whose next attempt was correct are kept."""
    examples = []
    history: list[Message] = [{"role": "user", "content": problem}]
    turns = episode.turns
    for index, turn in enumerate(turns):
        if turn.role == "teacher" and not turn.fell_back:
            revision = turns[index + 1] if index + 1 < len(turns) else None
            fixed = revision is not None and bool(revision.correct)
            if fixed or not only_followed_by_fix:
                examples.append(
                    Example(
                        prompt=self_critique_messages(history, template),
                        completion=[{"role": "assistant", "content": turn.text}],
                        kind="critique",
                        task_id=episode.task_id,
                    )
                )
        history.append({"role": _role(turn.role), "content": turn.text})
    return examples


def student_examples(episode: Episode, problem: str) -> list[Example]:
    """The solving turn of a solved episode, in its full public context."""
    history: list[Message] = [{"role": "user", "content": problem}]
    for turn in episode.turns:
        if turn.role == "student" and turn.correct:
            return [
                Example(
                    prompt=list(history),
                    completion=[{"role": "assistant", "content": turn.text}],
                    kind="student",
                    task_id=episode.task_id,
                )
            ]
        history.append({"role": _role(turn.role), "content": turn.text})
    return []


def build_examples(
    cfg: Config, episodes: Sequence[Episode], tasks: Mapping[str, Task]
) -> list[Example]:
    """Every distillation example of ``episodes``, each checked by :func:`assert_public`."""
    from rl2f.leakage import LeakGuard

    d = cfg.distill
    if not d.include_critiques and not d.include_student_turns:
        raise UserError(
            "distill.include_critiques and distill.include_student_turns are both false: "
            "nothing to train on"
        )
    guard = LeakGuard()
    template = cfg.teacher.self_prompt_template
    examples: list[Example] = []
    for number, episode in enumerate(episodes):
        task = tasks.get(episode.task_id)
        if task is None:
            raise DataError(
                f"{cfg.distill.episodes_dir}: episode {number}: task {episode.task_id} is not in "
                f"{cfg.data.out_dir}"
            )
        if episode.student_visible and episode.student_visible[0] != task.prompt:
            raise DataError(
                f"{cfg.distill.episodes_dir}: episode {number}: its first prompt is not the "
                f"prompt of task {task.id} (episodes and tasks come from different runs)"
            )
        found = []
        if d.include_critiques:
            found += critique_examples(episode, task.prompt, template, d.only_followed_by_fix)
        if d.include_student_turns:
            found += student_examples(episode, task.prompt)
        for example in found:
            assert_public(example, task, guard, template)
        examples += found
    random.Random(cfg.distill.seed).shuffle(examples)
    return examples


def assert_public(example: Example, task: Task, guard: Any, template: str) -> None:
    """Fail unless the example's input is public: the task's prompt first, then the student's own
    attempts and teacher critiques that pass the leak guard, then (critique examples) the
    self-critique request. A critique target must pass the guard too; a student target is the
    student's own correct answer, which it wrote."""
    where = f"distill example of task {task.id} ({example.kind})"
    if not example.prompt or example.prompt[0] != {"role": "user", "content": task.prompt}:
        raise DataError(f"{where}: the first message is not the task's public prompt")
    conversation = example.prompt
    if example.kind == "critique":
        conversation = example.prompt[:-1]
        if example.prompt != self_critique_messages(conversation, template):
            raise DataError(f"{where}: does not end with the self-critique request")
    checked = [m["content"] for m in conversation[1:] if m["role"] != "assistant"]
    if example.kind == "critique":
        checked += [m["content"] for m in example.completion]
    for text in checked:
        if guard.check(task, text).leaked:
            raise DataError(f"{where}: a critique reveals the privileged answer: {text[:80]!r}")


# ---------------------------------------------------------------- training
def critic_settings(cfg: Config, examples: Sequence[Example], base_dir: str) -> dict[str, Any]:
    """What decides the distilled model: a checkpoint is resumed only under the same settings."""
    from rl2f.training.models import model_identity

    digest = hashlib.sha256()
    for example in examples:
        digest.update(json.dumps([example.prompt, example.completion], sort_keys=True).encode())
    return {
        "distill": cfg.distill.model_dump(mode="json", exclude={"save_steps"}),
        "base": model_identity(base_dir),
        "examples": digest.hexdigest(),
    }


def build_critic_trainer(
    cfg: Config, examples: Sequence[Example], base_dir: str, work_dir: Path, report_to: list[str]
):  # noqa: ANN201
    """TRL's SFTTrainer over ``examples`` in prompt/completion form: the loss falls on the
    completion (the critique, or the student's solving turn) only."""
    import torch
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from rl2f.training.models import load_causal_lm, load_tokenizer_with_template, world_size

    d = cfg.distill
    if d.batch_size % world_size():
        raise UserError(
            f"distill.batch_size: {d.batch_size} does not split over {world_size()} processes"
        )
    tokenizer = load_tokenizer_with_template(base_dir)
    model = load_causal_lm(base_dir, cfg.model.dtype)
    dataset = Dataset.from_list(
        [{"prompt": e.prompt, "completion": e.completion} for e in examples]
    )
    cuda = torch.cuda.is_available()
    args = SFTConfig(
        output_dir=str(work_dir),
        max_steps=d.steps,
        per_device_train_batch_size=d.batch_size // world_size(),
        learning_rate=d.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=math.ceil(0.05 * d.steps),
        completion_only_loss=True,
        gradient_checkpointing=False,
        save_strategy="steps",
        save_steps=d.save_steps,
        save_total_limit=2,
        logging_steps=1,
        seed=d.seed,
        data_seed=d.seed,
        use_cpu=not cuda,
        bf16=cuda and torch.cuda.is_bf16_supported(),
        report_to=report_to,
    )
    return SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)


def train_critic(cfg: Config, examples: Sequence[Example], base_dir: str) -> dict[str, Any]:
    """Fine-tune ``base_dir`` on ``examples`` and publish the model to ``distill.out_dir``;
    resumable like the GRPO stages (checkpoints in ``<out_dir>.checkpoints``)."""
    from rl2f.tracking import active
    from rl2f.training.checkpoints import (
        checkpoint_dir,
        last_complete_checkpoint,
        resumable_checkpoint,
    )
    from rl2f.training.models import distributed_state, publish

    d = cfg.distill
    counts = {kind: sum(e.kind == kind for e in examples) for kind in ("critique", "student")}
    if not examples:
        # The answers-only ablation on episodes that nobody solved.
        raise DataError(
            f"{d.episodes_dir}: no distillation examples (no episode was solved and "
            "distill.include_critiques is false; roll out more episodes or train the policy longer)"
        )
    if d.include_critiques and not counts["critique"]:
        raise DataError(
            f"{d.episodes_dir}: no critique examples (no critique was followed by a fix; set "
            "distill.only_followed_by_fix=false or roll out more episodes)"
        )
    state = distributed_state()
    work_dir = checkpoint_dir(d.out_dir)
    if state.is_main_process:
        resumable_checkpoint(work_dir, critic_settings(cfg, examples, base_dir))
    state.wait_for_everyone()
    resume = last_complete_checkpoint(work_dir)
    report_to = ["mlflow"] if active() else ["none"]
    trainer = build_critic_trainer(cfg, examples, base_dir, work_dir, report_to)
    if resume:
        log.info("resuming distill from %s", resume)
    started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    seconds = time.perf_counter() - started
    if state.is_main_process:
        # A revision-trained policy's frozen first-attempt model stays paired with its critic.
        first_attempt = first_attempt_dir(base_dir)
        publish(trainer, trainer.processing_class, d.out_dir, first_attempt=first_attempt)
        shutil.rmtree(work_dir, ignore_errors=True)
    state.wait_for_everyone()
    return {
        "steps": trainer.state.global_step,
        "train_loss": None if math.isnan(result.training_loss) else result.training_loss,
        "examples": counts,
        "resumed_from": str(resume) if resume else None,
        "train_seconds": seconds,
    }
