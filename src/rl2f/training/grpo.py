"""GRPO over whole didactic conversations (RL2F) and its single-turn baseline, on TRL.

TRL's ``rollout_func`` hook hands us the prompts of a step (already repeated G times); we run the
project's own batched multi-turn loop (:func:`rl2f.rollout.run_episodes`) on the live policy and
return the flat conversation: ``completion_ids`` hold every student turn with the teacher's
feedback in between, and ``env_mask`` is 0 on the feedback so teacher tokens carry no loss. The
conversation reward (gamma^(t-1) when solved at turn t) reaches GRPO through a reward function
that reads it back from the rollout's extra fields.
"""

from __future__ import annotations

import logging
import math
import os
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rl2f.config import Config, EngineConfig, TeacherConfig
from rl2f.episodes import Episode
from rl2f.errors import UserError
from rl2f.tasks.schema import Task
from rl2f.training.checkpoints import last_complete_checkpoint, replace_dir

log = logging.getLogger(__name__)

# Fading teacher: the share of training after which each level takes over.
FADING_SCHEDULE = (("diagnostic", 0.0), ("directional", 1 / 3), ("binary", 2 / 3))


@dataclass(frozen=True)
class RunSpec:
    """What differs between the RL2F run and the single-turn baseline."""

    name: str
    out_dir: str
    max_turns: int
    num_generations: int


def run_specs(cfg: Config) -> dict[str, RunSpec]:
    t = cfg.train
    single_g = t.num_generations * t.max_turns if t.single_turn_match_budget else t.num_generations
    return {
        "rl2f": RunSpec("rl2f", t.rl2f_dir, t.max_turns, t.num_generations),
        "single_turn": RunSpec("single_turn", t.single_turn_dir, 1, single_g),
    }


def checkpoint_dir(out_dir: str) -> Path:
    """Checkpoints live beside the model, outside the DVC output DVC deletes before a rerun."""
    out = Path(out_dir)
    return out.with_name(f"{out.name}.checkpoints")


def load_student(cfg: Config):  # noqa: ANN201
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = cfg.model.base_path
    if cfg.model.student is None and not Path(source).exists():
        raise UserError(f"{source}: base model not found (run `rl2f bootstrap` first)")
    tokenizer = AutoTokenizer.from_pretrained(source)
    if not tokenizer.chat_template:
        raise UserError(f"{source}: the tokenizer has no chat template; multi-turn RL needs one")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    dtype = None if cfg.model.dtype == "auto" else getattr(torch, cfg.model.dtype)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
    if cfg.train.lora:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=cfg.train.lora_r,
            lora_alpha=cfg.train.lora_alpha,
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, lora)
    return model, tokenizer


def teacher_level(cfg: Config, progress: float) -> str:
    if not cfg.train.fading_teacher:
        return cfg.teacher.level
    level = FADING_SCHEDULE[0][0]
    for name, start in FADING_SCHEDULE:
        if progress >= start:
            level = name
    return level


def turn_returns(episode: Episode, gamma: float) -> list[float]:
    """Per-turn credit: the return seen from each student turn. An early wrong turn that the
    student later fixed earns gamma^(distance to the fix), not the whole conversation reward."""
    turns = len(episode.student_turns)
    if episode.solved_at is None:
        return [0.0] * turns
    return [
        gamma ** (episode.solved_at - t) if t <= episode.solved_at else 0.0
        for t in range(1, turns + 1)
    ]


def token_turn_index(episode: Episode) -> list[int]:
    """For each completion token, the 0-based index of the student turn it belongs to (teacher
    tokens get the index of the turn they precede; their loss is masked anyway)."""
    index, turn = [], 0
    for item in episode.turns:
        index.extend([turn] * len(item.token_ids))
        if item.role == "student":
            turn += 1
    return [min(i, max(turn - 1, 0)) for i in index]


class ConversationRollout:
    """The ``rollout_func`` TRL calls each generation step."""

    def __init__(self, cfg: Config, spec: RunSpec, tasks: list[Task], tokenizer: Any) -> None:
        from rl2f.leakage import LeakGuard

        self.cfg, self.spec, self.tokenizer = cfg, spec, tokenizer
        self.by_prompt = {task.prompt: task for task in tasks}
        self.guard = LeakGuard()
        self.last_episodes: list[Episode] = []
        self._teachers: dict[str, Any] = {}

    def _teacher(self, level: str):  # noqa: ANN202
        from rl2f.teachers import make_teacher

        if level not in self._teachers:
            teacher_cfg: TeacherConfig = self.cfg.teacher.model_copy(update={"level": level})
            self._teachers[level] = make_teacher(teacher_cfg)
        return self._teachers[level]

    def __call__(self, prompts: list[Any], trainer: Any) -> dict[str, list]:
        from rl2f.engines import make_engine
        from rl2f.rollout import run_episodes

        tasks = [self.by_prompt[_prompt_text(p)] for p in prompts]
        model = trainer.accelerator.unwrap_model(trainer.model)
        engine_cfg = EngineConfig(
            kind="transformers", batch_size=self.cfg.rollout.engine.batch_size
        )
        student = make_engine(engine_cfg, model, self.tokenizer)
        progress = trainer.state.global_step / max(trainer.state.max_steps or 1, 1)
        level = teacher_level(self.cfg, progress)
        sampling = self.cfg.rollout.sampling.model_copy(
            update={"seed": self.cfg.train.seed * 100_003 + trainer.state.global_step}
        )
        # The trainer already repeated each prompt G times: one episode per entry keeps TRL's
        # group layout (G consecutive completions per prompt).
        episodes = run_episodes(
            tasks,
            student,
            self._teacher(level),
            num_generations=1,
            max_turns=self.spec.max_turns,
            gamma=self.cfg.rollout.gamma,
            sampling=sampling,
            guard=self.guard,
            max_regenerations=self.cfg.teacher.max_regenerations,
            fallback_message=self.cfg.teacher.fallback_message,
            policy_name=self.spec.name,
            progress=False,
        )
        self.last_episodes = episodes
        self._log(trainer, episodes, level)
        return {
            "prompt_ids": [e.prompt_ids for e in episodes],
            "completion_ids": [e.completion_ids for e in episodes],
            "logprobs": [e.completion_logprobs for e in episodes],
            "env_mask": [e.completion_mask for e in episodes],
            "conversation_reward": [e.reward for e in episodes],
        }

    def _log(self, trainer: Any, episodes: list[Episode], level: str) -> None:
        metrics = trainer._metrics["train"]
        for turn in range(1, self.spec.max_turns + 1):
            solved = sum(e.solved_at is not None and e.solved_at <= turn for e in episodes)
            metrics[f"rollout/acc_turn_{turn}"].append(solved / len(episodes))
        turns = [len(e.student_turns) for e in episodes]
        metrics["rollout/student_turns"].append(statistics.fmean(turns))
        teacher_turns = [t for e in episodes for t in e.teacher_turns]
        rejected = sum(t.leaked_attempts for t in teacher_turns)
        metrics["rollout/leaks_rejected"].append(float(rejected))
        metrics["rollout/fallbacks"].append(float(sum(t.fell_back for t in teacher_turns)))
        metrics["rollout/teacher_level"].append(
            float([name for name, _ in FADING_SCHEDULE].index(level))
        )


def _prompt_text(prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt
    return prompt[-1]["content"]  # conversational datasets: the user message


def conversation_reward(
    completions: list, conversation_reward: list[float], **_: Any
) -> list[float]:
    """GRPO reward: the discounted conversation reward computed by the rollout."""
    return [float(r) for r in conversation_reward]


def make_trainer_class(per_turn_credit: bool):  # noqa: ANN201
    from trl import GRPOTrainer

    if not per_turn_credit:
        return GRPOTrainer

    class PerTurnCreditGRPOTrainer(GRPOTrainer):
        """Token-level advantages: each student turn's tokens get the group-normalised return of
        that turn (TRL's loss accepts advantages of shape (B, T))."""

        def _generate_and_score_completions(self, inputs):  # noqa: ANN001, ANN202
            output = super()._generate_and_score_completions(inputs)
            episodes = self.rollout_func.last_episodes
            gamma = self.rollout_func.cfg.rollout.gamma
            g = self.num_generations
            width = output["completion_ids"].shape[1]
            advantages = torch.zeros(len(episodes), width, device=output["advantages"].device)
            returns = [turn_returns(e, gamma) for e in episodes]
            for start in range(0, len(episodes), g):
                group = range(start, start + g)
                depth = max(len(returns[i]) for i in group)
                for turn in range(depth):
                    values = [returns[i][turn] for i in group if turn < len(returns[i])]
                    mean = statistics.fmean(values)
                    std = statistics.pstdev(values) if len(values) > 1 else 0.0
                    for i in group:
                        if turn >= len(returns[i]):
                            continue
                        index = torch.tensor(token_turn_index(episodes[i]))
                        columns = (index == turn).nonzero().flatten()
                        advantages[i, columns] = (returns[i][turn] - mean) / (std + 1e-4)
            output["advantages"] = advantages
            return output

    return PerTurnCreditGRPOTrainer


def grpo_config(cfg: Config, spec: RunSpec, report_to: list[str]):  # noqa: ANN201
    from trl import GRPOConfig

    t, sampling = cfg.train, cfg.rollout.sampling
    max_turn_tokens = sampling.max_new_tokens + 64  # student reply + rendered feedback turn
    return GRPOConfig(
        output_dir=str(checkpoint_dir(spec.out_dir)),
        max_steps=t.steps,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_ratio,  # a float below 1 is a fraction of max_steps
        max_grad_norm=t.max_grad_norm,
        per_device_train_batch_size=t.tasks_per_step * spec.num_generations,
        gradient_accumulation_steps=1,
        num_generations=spec.num_generations,
        max_completion_length=spec.max_turns * max_turn_tokens,
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
        use_cpu=not torch.cuda.is_available(),
        bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
        remove_unused_columns=False,
        shuffle_dataset=True,
        disable_tqdm=False,
    )


def train(cfg: Config, spec: RunSpec, tasks: list[Task], report_to: list[str]) -> dict[str, Any]:
    from datasets import Dataset

    if not tasks:
        raise UserError("train: no training tasks (data/tasks/train.parquet is empty)")
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    model, tokenizer = load_student(cfg)
    prompts = list(dict.fromkeys(task.prompt for task in tasks))
    dataset = Dataset.from_dict({"prompt": prompts})
    rollout = ConversationRollout(cfg, spec, tasks, tokenizer)
    trainer_class = make_trainer_class(cfg.train.per_turn_credit and spec.max_turns > 1)
    trainer = trainer_class(
        model=model,
        reward_funcs=[conversation_reward],
        args=grpo_config(cfg, spec, report_to),
        train_dataset=dataset,
        processing_class=tokenizer,
        rollout_func=rollout,
    )
    resume = last_complete_checkpoint(trainer.args.output_dir)
    if resume:
        log.info("resuming %s from %s", spec.name, resume)
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    staging = Path(spec.out_dir).with_name(f".{Path(spec.out_dir).name}.staging")
    final = trainer.accelerator.unwrap_model(trainer.model)
    if cfg.train.lora:
        final = final.merge_and_unload()
    final.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    replace_dir(staging, spec.out_dir)
    history = [row for row in trainer.state.log_history if "loss" in row]
    return {
        "steps": trainer.state.global_step,
        "train_loss": result.training_loss if not math.isnan(result.training_loss) else None,
        "final_reward": history[-1].get("reward") if history else None,
        "resumed_from": str(resume) if resume else None,
    }
