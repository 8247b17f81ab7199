"""Bootstrap the embedded default student: a tokenizer trained on the task corpus, a small Qwen2
model built from scratch, and a short single-turn SFT warm start with TRL's SFTTrainer.

The target is a weak but not hopeless model (first-turn accuracy well inside (0, 1)), so RL has
room to improve it and gets reward from the start. Four choices serve that:

- the learning rate warms up and decays to zero (cosine), so the final weights are the end of a
  settled run rather than whatever step a constant-rate run happened to stop on;
- the loss covers assistant tokens only, so the model learns to answer, not to ask;
- the corpus (:mod:`rl2f.training.bootstrap_corpus`) holds several questions per conversation
  but no feedback, so later turns are familiar in form while using feedback stays unlearned;
- enough steps: on the default tasks the model first learns to copy the operands (a few
  hundred steps) and only then to do the arithmetic (after about a thousand).

Training checkpoints every ``sft_save_steps`` steps in a work folder beside the output; a run
killed at any point resumes from the last complete checkpoint when started again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerFast, set_seed
from trl import SFTConfig, SFTTrainer

from rl2f.config import EngineConfig, SamplingConfig, TinyModelConfig
from rl2f.engines import make_engine
from rl2f.engines.base import Message
from rl2f.errors import DataError
from rl2f.tasks.io import atomic_write_text
from rl2f.tasks.schema import Task
from rl2f.tasks.verifiers.base import Verdict
from rl2f.training.bootstrap_corpus import build_conversations, corpus_texts
from rl2f.training.checkpoints import last_complete_checkpoint, replace_dir, resumable_checkpoint
from rl2f.training.tiny_model import build_model, train_tokenizer

log = logging.getLogger(__name__)

METRICS_FILE = "bootstrap_metrics.json"
TOKENIZER_DIR = "tokenizer"

Judge = Callable[[Task, str], Verdict]


@dataclass(frozen=True)
class ProbeSettings:
    """How the finished model is measured: first-turn accuracy on held-out tasks, greedy and
    sampled, and what it does after a user turn it has never seen: the retry message
    (``followup_message``) and, when ``critique_level`` is set, the oracle teacher's critique
    at that level. RL at later turns only gets reward if the model then makes a fresh,
    well-formed attempt that is sometimes right."""

    followup_message: str
    critique_level: str | None = "diagnostic"
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)


def verifier_judge(task: Task, response: str) -> Verdict:
    from rl2f.tasks.verifiers import verify

    return verify(task, response)


def well_formed(verdict: Verdict) -> bool:
    """The verifier could read a final answer of the kind the task asks for (a number for
    math): an attempt at the problem, right or wrong, rather than nonsense."""
    from rl2f.teachers.oracle import exact_value

    return verdict.extracted is not None and exact_value(verdict.extracted) is not None


def work_dir_for(out_dir: Path) -> Path:
    """Checkpoints live beside the output, not in it: DVC deletes a stage's outputs before it
    reruns the stage, which would throw away the checkpoints a resumed run needs."""
    return out_dir.with_name(f"{out_dir.name}.checkpoints")


def _run_settings(tiny: TinyModelConfig, tasks: Sequence[Task]) -> dict[str, Any]:
    """What decides the result; a checkpoint is resumed only under the same settings."""
    ids = hashlib.sha256("\n".join(sorted(t.id for t in tasks)).encode()).hexdigest()
    return {"tiny": tiny.model_dump(mode="json", exclude={"sft_save_steps"}), "train_tasks": ids}


def _tokenizer(
    work_dir: Path, conversations: Sequence[list[Message]], tiny: TinyModelConfig
) -> PreTrainedTokenizerFast:
    """Trained once per run and kept in the work folder, so a resumed run reuses the exact
    vocabulary its checkpoints were trained with."""
    saved = work_dir / TOKENIZER_DIR
    if saved.exists():
        return PreTrainedTokenizerFast.from_pretrained(saved)
    tokenizer = train_tokenizer(
        corpus_texts(conversations), tiny.vocab_size, tiny.max_position_embeddings
    )
    partial = work_dir / f".{TOKENIZER_DIR}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    tokenizer.save_pretrained(partial)
    partial.rename(saved)
    return PreTrainedTokenizerFast.from_pretrained(saved)


def _sft_config(tiny: TinyModelConfig, work_dir: Path) -> SFTConfig:
    return SFTConfig(
        output_dir=str(work_dir),
        max_steps=tiny.sft_steps,
        per_device_train_batch_size=tiny.sft_batch_size,
        learning_rate=tiny.sft_learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=math.ceil(tiny.sft_steps * tiny.sft_warmup_ratio),
        # Measured on the default tasks: with weight decay and a shorter second-moment memory
        # the model gets from copying operands to doing the arithmetic in fewer steps.
        weight_decay=0.1,
        adam_beta2=0.98,
        max_grad_norm=1.0,
        assistant_only_loss=True,
        # A sub-million-parameter model: full precision, and nothing to gain from recomputing
        # activations (TRL turns both on by default).
        bf16=False,
        activation_checkpointing=False,
        dataloader_pin_memory=torch.cuda.is_available(),
        max_length=tiny.max_position_embeddings,
        save_strategy="steps",
        save_steps=tiny.sft_save_steps,
        save_total_limit=2,
        logging_steps=max(1, tiny.sft_steps // 20),
        logging_first_step=True,
        seed=tiny.seed,
        data_seed=tiny.seed,
        dataloader_num_workers=0,
        report_to="none",
        disable_tqdm=False,
    )


def train_sft(
    tiny: TinyModelConfig, tasks: Sequence[Task], work_dir: Path
) -> tuple[PreTrainedModel, PreTrainedTokenizerFast, dict[str, float]]:
    """Build and SFT the tiny model, resuming from ``work_dir`` when it holds a checkpoint of
    this same run."""
    resumable_checkpoint(work_dir, _run_settings(tiny, tasks))
    # One conversation per training example (a single pass, so the data order is fixed by the
    # seed alone), and every task at least once so the tokenizer sees the whole corpus.
    conversations = build_conversations(
        tasks,
        count=max(tiny.sft_steps * tiny.sft_batch_size, len(tasks)),
        questions_per_conversation=tiny.questions_per_conversation,
        seed=tiny.seed,
        retry_rate=tiny.retry_rate,
        edit_rate=tiny.edit_rate,
        filler_nudge_rate=tiny.filler_nudge_rate,
    )
    tokenizer = _tokenizer(work_dir, conversations, tiny)
    set_seed(tiny.seed)
    model = build_model(tiny, tokenizer)
    log.info(
        "tiny model: %.2fM parameters, vocabulary %d, %d conversations",
        model.num_parameters() / 1e6,
        len(tokenizer),
        len(conversations),
    )
    if tiny.sft_steps == 0:  # an untrained model (transformers reads max_steps=0 as "use epochs")
        return model, tokenizer, {}
    trainer = SFTTrainer(
        model=model,
        args=_sft_config(tiny, work_dir),
        train_dataset=Dataset.from_list([{"messages": c} for c in conversations]),
        processing_class=tokenizer,
    )
    checkpoint = last_complete_checkpoint(work_dir)
    if checkpoint is not None:
        log.info("resuming from %s", checkpoint)
    output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    stats = {"train_loss": float(output.training_loss), "final_loss": float(losses[-1])}
    return trainer.model, tokenizer, stats


def probe(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    tasks: Sequence[Task],
    settings: ProbeSettings,
    judge: Judge = verifier_judge,
) -> dict[str, float | int]:
    """First-turn accuracy (greedy and sampled), then, on the tasks whose sampled first answer
    was wrong, a second turn after each follow-up the model has never been trained on (the
    retry message, ``followup_*``; the oracle's critique, ``critique_*``): how often it is right
    then, how often the reply is a well-formed attempt, how often it gives a different answer,
    and how often it repeats itself word for word."""
    if not tasks:
        return {"n_eval": 0}
    engine = make_engine(settings.engine, model, tokenizer)
    sampled_cfg = settings.sampling
    greedy_cfg = sampled_cfg.model_copy(update={"temperature": 0.0})
    first_turns: list[list[Message]] = [[{"role": "user", "content": t.prompt}] for t in tasks]
    metrics: dict[str, float | int] = {"n_eval": len(tasks)}
    try:
        with tqdm(total=3, desc="probe", unit="pass") as bar:
            greedy_text = engine.chat(first_turns, greedy_cfg)
            greedy = [judge(t, r) for t, r in zip(tasks, greedy_text, strict=True)]
            bar.update()
            sampled_text = engine.chat(first_turns, sampled_cfg)
            sampled = [judge(t, r) for t, r in zip(tasks, sampled_text, strict=True)]
            bar.update()
            metrics["first_turn_accuracy_greedy"] = _mean([v.correct for v in greedy])
            metrics["first_turn_accuracy_sampled"] = _mean([v.correct for v in sampled])
            metrics["first_turn_well_formed"] = _mean([well_formed(v) for v in sampled])
            wrong = [i for i, verdict in enumerate(sampled) if not verdict.correct]
            metrics["followup_n"] = len(wrong)
            followups = _followups(tasks, sampled_text, sampled, wrong, settings)
            bar.total = 2 + len(followups)
            for prefix, messages in followups:
                if not wrong:
                    bar.update()
                    continue
                conversations: list[list[Message]] = [
                    [
                        *first_turns[i],
                        {"role": "assistant", "content": sampled_text[i]},
                        {"role": "user", "content": message},
                    ]
                    for i, message in zip(wrong, messages, strict=True)
                ]
                replies = engine.chat(conversations, sampled_cfg)
                bar.update()
                metrics |= _followup_metrics(
                    prefix,
                    [sampled_text[i] for i in wrong],
                    [sampled[i] for i in wrong],
                    replies,
                    [judge(tasks[i], r) for i, r in zip(wrong, replies, strict=True)],
                )
    finally:
        engine.close()
    return metrics


def _followups(
    tasks: Sequence[Task],
    texts: Sequence[str],
    verdicts: Sequence[Verdict],
    wrong: Sequence[int],
    settings: ProbeSettings,
) -> list[tuple[str, list[str]]]:
    """(metric prefix, the user message after each wrong answer) for every follow-up probed."""
    followups = [("followup", [settings.followup_message] * len(wrong))]
    if settings.critique_level is not None:
        from rl2f.teachers.base import CritiqueRequest
        from rl2f.teachers.oracle import OracleTeacher

        teacher = OracleTeacher(settings.critique_level)
        requests = [
            CritiqueRequest(
                task=tasks[i],
                conversation=[
                    {"role": "user", "content": tasks[i].prompt},
                    {"role": "assistant", "content": texts[i]},
                ],
                attempt=texts[i],
                verdict=verdicts[i],
                turn=1,
            )
            for i in wrong
        ]
        followups.append(("critique", teacher.critique(requests)))
    return followups


def _followup_metrics(
    prefix: str,
    before: Sequence[str],
    before_verdicts: Sequence[Verdict],
    after: Sequence[str],
    after_verdicts: Sequence[Verdict],
) -> dict[str, float]:
    changed = [
        well_formed(new) and new.extracted != old.extracted
        for old, new in zip(before_verdicts, after_verdicts, strict=True)
    ]
    return {
        # wrong -> right: the share of wrong first answers that are right after the follow-up
        f"{prefix}_accuracy_sampled": _mean([v.correct for v in after_verdicts]),
        f"{prefix}_well_formed_rate": _mean([well_formed(v) for v in after_verdicts]),
        f"{prefix}_changed_answer_rate": _mean(changed),
        f"{prefix}_repeat_rate": _mean(
            [a.strip() == b.strip() for a, b in zip(before, after, strict=True)]
        ),
    }


def _mean(flags: Sequence[bool]) -> float:
    return sum(flags) / len(flags) if flags else 0.0


def bootstrap_tiny_model(
    tiny: TinyModelConfig,
    train_tasks: Sequence[Task],
    eval_tasks: Sequence[Task],
    out_dir: str | Path,
    settings: ProbeSettings,
    judge: Judge = verifier_judge,
) -> dict[str, Any]:
    """Train, probe and save the tiny model to ``out_dir`` (replaced atomically), with the
    probe's numbers in ``out_dir/bootstrap_metrics.json``. Returns those metrics."""
    out_dir = Path(out_dir)
    tasks = [t for t in train_tasks if t.split == "train"]
    if not tasks:
        raise DataError("no train-split tasks to bootstrap the tiny model from")
    work_dir = work_dir_for(out_dir)
    started, started_cpu = time.monotonic(), time.process_time()
    model, tokenizer, train_stats = train_sft(tiny, tasks, work_dir)
    metrics: dict[str, Any] = {
        "parameters": model.num_parameters(),
        "vocab_size": len(tokenizer),
        "sft_steps": tiny.sft_steps,
        "train_tasks": len(tasks),
        # CPU time too: wall time on a shared machine says little about the run itself.
        "train_seconds": round(time.monotonic() - started, 1),
        "train_cpu_seconds": round(time.process_time() - started_cpu, 1),
        **train_stats,
        **probe(model, tokenizer, eval_tasks, settings, judge),
    }
    staging = out_dir.with_name(f".{out_dir.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    atomic_write_text(staging / METRICS_FILE, json.dumps(metrics, indent=2, sort_keys=True))
    replace_dir(staging, out_dir)
    shutil.rmtree(work_dir, ignore_errors=True)
    return metrics
