"""GRPO step time of the RL2F trainer, split into generation (the multi-turn rollout) and
optimisation, with student tokens/s and, on a GPU, the fraction of peak FLOP/s reached.

The policy is randomly initialised (the timing does not depend on what it knows): the tiny model
of params.yaml ``model.tiny`` by default, or with ``--arch qwen2.5-0.5b`` a model with the
Qwen2.5-0.5B configuration (24 layers, hidden 896, vocab 151,936). A random policy never solves
a task, so every conversation runs all ``--max-turns`` turns of ``--max-new-tokens`` tokens:
the worst case of a step, and the same work every step. Everything else is the real stage: real
arithmetic tasks from params.yaml's first source, the oracle teacher, the leak guard, TRL's
GRPOTrainer with our rollout_func.

FLOP/s count 6 x parameters x tokens of the optimisation batch (prompt and whole conversation,
teacher tokens included: the forward and backward pass runs over them). ``mfu_step`` divides by
the whole step, ``mfu_optimisation`` by its optimisation part only.

Usage: python benchmarks/train_step.py [--arch tiny|qwen2.5-0.5b] [--steps 3] [--warmup 1]
       [--tasks-per-step 8] [--num-generations 8] [--max-turns 4] [--max-new-tokens 48]
       [--threads N] [--peak-flops 989e12] [--no-cudnn-attention]
Prints a final line `RESULT {json}`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM, TrainerCallback

from rl2f.config import Config, load_config
from rl2f.tasks.io import write_tasks
from rl2f.tasks.schema import Task
from rl2f.training.grpo import build_trainer, run_specs
from rl2f.training.tiny_model import build_model, train_tokenizer

H100_BF16_DENSE_FLOPS = 989e12

# Qwen2.5-0.5B's architecture (config.json of the hub model), with random weights.
QWEN25_05B = {
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "vocab_size": 151936,
    "max_position_embeddings": 32768,
    "rope_theta": 1_000_000.0,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
}


@dataclass(frozen=True)
class StepTiming:
    seconds: float
    rollout_seconds: float
    student_tokens: int
    train_tokens: int


class StepClock(TrainerCallback):
    """Wall time of each optimiser step and the part of it spent in the rollout."""

    def __init__(self, rollout) -> None:  # noqa: ANN001
        self.rollout = rollout
        self.steps: list[StepTiming] = []

    def on_step_begin(self, args, state, control, **kwargs) -> None:  # noqa: ANN001
        _synchronize()
        self.started = time.perf_counter()
        self.rollout_before = self.rollout.seconds
        self.tokens_before = self.rollout.student_tokens

    def on_step_end(self, args, state, control, **kwargs) -> None:  # noqa: ANN001
        _synchronize()
        episodes = self.rollout.last_episodes
        self.steps.append(
            StepTiming(
                seconds=time.perf_counter() - self.started,
                rollout_seconds=self.rollout.seconds - self.rollout_before,
                student_tokens=self.rollout.student_tokens - self.tokens_before,
                train_tokens=sum(len(e.prompt_ids) + len(e.completion_ids) for e in episodes),
            )
        )


def _synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def arithmetic_tasks(cfg: Config, count: int) -> list[Task]:
    from rl2f.tasks.sources.reasoning_gym import load

    source = cfg.data.sources[0].model_copy(update={"size": count})
    return [dataclasses.replace(task, split="train") for task in load(source)]


def build_policy(arch: str, cfg: Config, tasks: list[Task], out_dir: Path, dtype: str) -> int:
    """A randomly initialised policy with a tokenizer trained on the tasks; returns its number
    of parameters (a tied embedding counted once, as the LM head's matmul)."""
    torch.manual_seed(0)
    tiny = cfg.model.tiny
    corpus = [task.prompt for task in tasks] + [f"Answer: {task.answer}" for task in tasks]
    tokenizer = train_tokenizer(corpus, tiny.vocab_size)
    if arch == "tiny":
        model = build_model(tiny, tokenizer)
    else:
        config = Qwen2Config(
            **QWEN25_05B,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=None,
        )
        model = Qwen2ForCausalLM(config)
        model.generation_config.eos_token_id = tokenizer.eos_token_id
    model = model.to(getattr(torch, dtype))
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return model.num_parameters()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=["tiny", "qwen2.5-0.5b"], default="tiny")
    parser.add_argument("--steps", type=int, default=3, help="measured steps")
    parser.add_argument("--warmup", type=int, default=1, help="steps run before measuring")
    parser.add_argument("--tasks-per-step", type=int, default=8)
    parser.add_argument("--num-generations", type=int, default=8)
    parser.add_argument("--max-turns", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--dtype", default=None, help="default bfloat16 on GPU, else float32")
    parser.add_argument(
        "--peak-flops",
        type=float,
        default=None,
        help="peak FLOP/s of the device; on a GPU defaults to H100 bf16 dense (989e12)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--no-cudnn-attention",
        action="store_true",
        help="turn off cuDNN's attention kernel (the GPU test of RESULTS.md's open question)",
    )
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.no_cudnn_attention:
        # cuDNN builds an attention graph per sequence length; decoding adds a column a step.
        torch.backends.cuda.enable_cudnn_sdp(False)
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cuda = torch.cuda.is_available()
    dtype = args.dtype or ("bfloat16" if cuda else "float32")
    peak = args.peak_flops or (H100_BF16_DENSE_FLOPS if cuda else None)

    base = load_config(args.params)
    tasks = arithmetic_tasks(base, 4 * args.tasks_per_step * (args.warmup + args.steps))
    with tempfile.TemporaryDirectory(prefix="rl2f-bench-") as scratch:
        root = Path(scratch)
        parameters = build_policy(args.arch, base, tasks, root / "policy", dtype)
        write_tasks(root / "train.parquet", tasks)
        cfg = load_config(
            args.params,
            [
                f"model.student={root / 'policy'}",
                f"model.dtype={dtype}",
                "tracking.enabled=false",
                f"train.steps={args.warmup + args.steps}",
                "train.save_steps=1000000",
                f"train.tasks_per_step={args.tasks_per_step}",
                f"train.num_generations={args.num_generations}",
                f"train.max_turns={args.max_turns}",
                f"train.rl2f_dir={root / 'rl2f'}",
                f"rollout.sampling.max_new_tokens={args.max_new_tokens}",
                f"rollout.engine.batch_size={args.tasks_per_step * args.num_generations}",
            ],
        )
        trainer, rollout = build_trainer(cfg, run_specs(cfg)["rl2f"], tasks, ["none"])
        clock = StepClock(rollout)
        trainer.add_callback(clock)
        trainer.train()
    measured = clock.steps[args.warmup :]

    step_s = statistics.fmean(s.seconds for s in measured)
    rollout_s = statistics.fmean(s.rollout_seconds for s in measured)
    student_tokens = statistics.fmean(s.student_tokens for s in measured)
    train_tokens = statistics.fmean(s.train_tokens for s in measured)
    flops = 6 * parameters * train_tokens
    device = torch.cuda.get_device_name() if cuda else f"{platform.machine()} CPU"
    result = {
        "arch": args.arch,
        "device": device,
        "threads": torch.get_num_threads(),
        "dtype": dtype,
        "parameters": parameters,
        "conversations_per_step": args.tasks_per_step * args.num_generations,
        "max_turns": args.max_turns,
        "max_new_tokens": args.max_new_tokens,
        "measured_steps": len(measured),
        "step_s": round(step_s, 3),
        "generation_s": round(rollout_s, 3),
        "optimisation_s": round(step_s - rollout_s, 3),
        "generation_share": round(rollout_s / step_s, 3),
        "student_tokens_per_step": round(student_tokens),
        "train_tokens_per_step": round(train_tokens),
        "student_tokens_per_s": round(student_tokens / step_s, 1),
        "generation_tokens_per_s": round(student_tokens / rollout_s, 1),
        "train_tokens_per_s": round(train_tokens / step_s, 1),
        "flops_per_s": round(flops / step_s),
        "peak_flops": peak,
        "mfu_step": round(flops / step_s / peak, 5) if peak else None,
        "mfu_optimisation": round(flops / (step_s - rollout_s) / peak, 5) if peak else None,
    }
    print(
        f"{args.arch} on {device}: {step_s:.2f} s/step, {result['generation_share']:.0%} in "
        f"generation, {result['student_tokens_per_s']:.0f} student tokens/s"
    )
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
