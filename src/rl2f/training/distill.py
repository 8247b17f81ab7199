"""Critique distillation: teach the policy to predict the teacher's critique from public context.

An example's input is what the student could see (the problem, its attempts, earlier critiques)
followed by the self-critique request; its target is the privileged teacher's critique. The
privileged answer never enters an input: the teacher wrote the critique with it, but the leak
guard already kept it out of the critique, and every example is checked again here. Student turns
of solved episodes are mixed in so the model keeps its student skill. Loss falls on the target
only (TRL's prompt/completion format).
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rl2f.config import Config
from rl2f.engines.base import Message
from rl2f.episodes import Episode
from rl2f.errors import DataError
from rl2f.tasks.schema import Task

log = logging.getLogger(__name__)


def self_critique_messages(conversation: list[Message], template: str) -> list[Message]:
    """The public conversation (ending with the student's attempt) plus the request to critique
    that attempt. The ``self`` teacher sends exactly this at test time, so training and use see
    one format. The template may name {prompt} (the problem) and {attempt} (the last answer)."""
    problem = conversation[0]["content"]
    attempt = conversation[-1]["content"]
    request = template.format(prompt=problem, attempt=attempt)
    return [*conversation, {"role": "user", "content": request}]


@dataclass(frozen=True)
class Example:
    prompt: list[Message]
    completion: list[Message]
    kind: str  # "critique" | "student"
    task_id: str


def critique_examples(
    episode: Episode, problem: str, template: str, only_followed_by_fix: bool
) -> list[Example]:
    examples = []
    history: list[Message] = [{"role": "user", "content": problem}]
    turns = episode.turns
    for index, turn in enumerate(turns):
        if turn.role == "teacher":
            revision = turns[index + 1] if index + 1 < len(turns) else None
            fixed = revision is not None and bool(revision.correct)
            if (fixed or not only_followed_by_fix) and not turn.fell_back:
                examples.append(
                    Example(
                        prompt=self_critique_messages(history, template),
                        completion=[{"role": "assistant", "content": turn.text}],
                        kind="critique",
                        task_id=episode.task_id,
                    )
                )
        role = "assistant" if turn.role == "student" else "user"
        history.append({"role": role, "content": turn.text})
    return examples


def student_examples(episode: Episode, problem: str) -> list[Example]:
    """The solving turn of a solved episode, in its full public context."""
    if episode.solved_at is None:
        return []
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
        history.append(
            {"role": "assistant" if turn.role == "student" else "user", "content": turn.text}
        )
    return []


def build_examples(cfg: Config, episodes: list[Episode], tasks: dict[str, Task]) -> list[Example]:
    from rl2f.leakage import LeakGuard

    guard = LeakGuard()
    examples: list[Example] = []
    for episode in episodes:
        task = tasks.get(episode.task_id)
        if task is None:
            raise DataError(f"episode of task {episode.task_id}: task not found in data/tasks")
        examples += critique_examples(
            episode, task.prompt, cfg.teacher.self_prompt_template, cfg.distill.only_followed_by_fix
        )
        if cfg.distill.include_student_turns:
            examples += student_examples(episode, task.prompt)
    for example in examples:
        assert_public(example, tasks[example.task_id], guard)
    random.Random(cfg.distill.seed).shuffle(examples)
    return examples


def assert_public(example: Example, task: Task, guard: Any) -> None:
    """Inputs hold the problem, the student's own attempts and teacher critiques; only the
    critiques (and a critique target) could carry the privileged answer, so each is checked."""
    critiques = [m["content"] for m in example.prompt[1:-1] if m["role"] == "user"]
    if example.kind == "critique":
        critiques += [m["content"] for m in example.completion]
    for text in critiques:
        if guard.check(task, text).leaked:
            raise DataError(f"distill example for task {task.id}: a critique reveals the answer")


def train_critic(cfg: Config, examples: list[Example], base_dir: str) -> dict[str, Any]:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from rl2f.training.checkpoints import last_complete_checkpoint, replace_dir

    if not examples:
        raise DataError(
            f"{cfg.distill.episodes_dir}: no critique examples (no critique was followed by a fix; "
            "set distill.only_followed_by_fix=false or roll out more episodes)"
        )
    d = cfg.distill
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    work_dir = Path(d.out_dir).with_name(f"{Path(d.out_dir).name}.checkpoints")
    dataset = Dataset.from_list(
        [{"prompt": e.prompt, "completion": e.completion} for e in examples]
    )
    args = SFTConfig(
        output_dir=str(work_dir),
        max_steps=d.steps,
        per_device_train_batch_size=d.batch_size,
        learning_rate=d.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=0.05,  # a fraction of max_steps
        completion_only_loss=True,
        bf16=False,
        gradient_checkpointing=False,
        save_strategy="steps",
        save_steps=d.save_steps,
        save_total_limit=2,
        logging_steps=1,
        seed=d.seed,
        data_seed=d.seed,
        report_to=["mlflow"] if cfg.tracking.enabled else "none",
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    resume = last_complete_checkpoint(work_dir)
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    staging = Path(d.out_dir).with_name(f".{Path(d.out_dir).name}.staging")
    trainer.model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    replace_dir(staging, d.out_dir)
    counts = {kind: sum(e.kind == kind for e in examples) for kind in ("critique", "student")}
    summary = {
        "steps": trainer.state.global_step,
        "train_loss": float(result.training_loss),
        "examples": counts,
        "resumed_from": str(resume) if resume else None,
    }
    (Path(d.out_dir) / "distill_summary.json").write_text(json.dumps(summary, indent=2))
    return summary
