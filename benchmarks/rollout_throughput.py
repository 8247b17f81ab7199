"""Throughput of the batched didactic loop against one episode at a time.

For each batch size B, the same B tasks are rolled out twice in the same process: once through
:func:`rl2f.rollout.run_episodes` with all B episodes in flight (every turn one batched student
call, concurrent verification, one batched teacher call), and once one episode per call. The
whole loop is timed (student, verifier, oracle teacher, leak guard), not just generation.

The student is randomly initialised: throughput does not depend on the weights, and a random
model never solves a task, so every episode runs all ``--max-turns`` turns. A random model
rarely samples its end-of-turn token, so attempts are close to ``--max-new-tokens`` long; the
student token rate is reported as well so unequal lengths cannot flatter either side.

    python benchmarks/rollout_throughput.py                      # CPU, bootstrapped tiny size
    python benchmarks/rollout_throughput.py --arch qwen2.5-0.5b --device cuda

``qwen2.5-0.5b`` builds Qwen2.5-0.5B's shapes (24 layers, hidden 896, 151,936-token vocabulary)
with random weights. The tokenizer stays the small trained one: ids it does not know decode to
nothing, which changes the text the verifier sees but not the compute the model does.

The last line is ``RESULT {json}`` with every measurement and the speed-ups at the largest B.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from transformers import Qwen2Config, Qwen2ForCausalLM  # noqa: E402

from rl2f.config import EngineConfig, SamplingConfig, TeacherConfig, TinyModelConfig  # noqa: E402
from rl2f.engines import make_engine  # noqa: E402
from rl2f.leakage import LeakGuard  # noqa: E402
from rl2f.rollout import run_episodes  # noqa: E402
from rl2f.tasks.schema import Task  # noqa: E402
from rl2f.teachers import make_teacher  # noqa: E402
from rl2f.training.tiny_model import build_model, train_tokenizer  # noqa: E402

ARCHS = ("tiny", "qwen2.5-0.5b")
PROMPT = "Calculate {a} + {b}.\nGive your final answer after 'Answer:'."


@dataclass(frozen=True)
class Measurement:
    batch_size: int
    episodes: int
    batched_s: float
    sequential_s: float
    batched_tokens: int
    sequential_tokens: int

    @property
    def episodes_per_s(self) -> tuple[float, float]:
        return self.episodes / self.batched_s, self.episodes / self.sequential_s

    @property
    def tokens_per_s(self) -> tuple[float, float]:
        return self.batched_tokens / self.batched_s, self.sequential_tokens / self.sequential_s

    def as_dict(self) -> dict[str, float | int]:
        (batched_eps, sequential_eps), (batched_tps, sequential_tps) = (
            self.episodes_per_s,
            self.tokens_per_s,
        )
        return {
            **asdict(self),
            "batched_episodes_per_s": round(batched_eps, 3),
            "sequential_episodes_per_s": round(sequential_eps, 3),
            "batched_tokens_per_s": round(batched_tps, 1),
            "sequential_tokens_per_s": round(sequential_tps, 1),
            "episodes_speedup": round(batched_eps / sequential_eps, 2),
            "tokens_speedup": round(batched_tps / sequential_tps, 2),
        }


def tasks_for(count: int) -> list[Task]:
    return [
        Task(
            domain="math",
            source="benchmark",
            prompt=PROMPT.format(a=10 + i, b=3 + i % 7),
            answer=str(13 + i + i % 7),
            verifier="math",
        )
        for i in range(count)
    ]


def build_student(arch: str, out_dir: Path, seed: int) -> int:
    """Save a random model of ``arch`` and its tokenizer to ``out_dir``; returns the parameter
    count."""
    torch.manual_seed(seed)
    tiny = TinyModelConfig()  # the size the bootstrap stage trains
    corpus = [PROMPT.format(a=a, b=b) + f" Answer: {a + b}" for a in range(40) for b in range(40)]
    tokenizer = train_tokenizer(corpus, tiny.vocab_size)
    if arch == "tiny":
        model = build_model(tiny, tokenizer)
    else:
        config = Qwen2Config(  # Qwen2.5-0.5B's published shapes
            vocab_size=151_936,
            hidden_size=896,
            intermediate_size=4_864,
            num_hidden_layers=24,
            num_attention_heads=14,
            num_key_value_heads=2,
            max_position_embeddings=32_768,
            rope_theta=1_000_000.0,
            tie_word_embeddings=True,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        model = Qwen2ForCausalLM(config)
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return sum(p.numel() for p in model.parameters())


def roll(tasks: list[Task], student, teacher, args: argparse.Namespace) -> tuple[float, int]:
    """Seconds and student tokens for one run_episodes call over ``tasks``."""
    sampling = SamplingConfig(
        temperature=args.temperature, max_new_tokens=args.max_new_tokens, seed=args.seed
    )
    started = time.perf_counter()
    episodes = run_episodes(
        tasks,
        student,
        teacher,
        num_generations=1,
        max_turns=args.max_turns,
        gamma=0.7,
        sampling=sampling,
        guard=LeakGuard(),
        max_regenerations=2,
        fallback_message=TeacherConfig().fallback_message,
        policy_name=args.arch,
        progress=False,
    )
    if student.device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - started
    return elapsed, sum(sum(episode.completion_mask) for episode in episodes)


def measure(batch_size: int, student, teacher, args: argparse.Namespace) -> Measurement:
    tasks = tasks_for(batch_size)
    batched_s, batched_tokens = roll(tasks, student, teacher, args)
    sequential_s, sequential_tokens = 0.0, 0
    for task in tasks:
        seconds, tokens = roll([task], student, teacher, args)
        sequential_s += seconds
        sequential_tokens += tokens
    return Measurement(
        batch_size, len(tasks), batched_s, sequential_s, batched_tokens, sequential_tokens
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=ARCHS, default="tiny")
    parser.add_argument("--batch-sizes", default="1,8,32,64", help="comma-separated")
    parser.add_argument("--max-turns", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    parser.add_argument("--dtype", default="auto", help="auto, float32, bfloat16, float16")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        args.batch_sizes = sorted({int(size) for size in args.batch_sizes.split(",")})
    except ValueError:
        parser.error(f"--batch-sizes: expected integers like 1,8,64, got {args.batch_sizes!r}")
    if args.batch_sizes[0] < 1:
        parser.error("--batch-sizes: sizes must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="rl2f-bench-") as model_dir:
        parameters = build_student(args.arch, Path(model_dir), args.seed)
        engine_cfg = EngineConfig(batch_size=max(args.batch_sizes), device=args.device)
        student = make_engine(engine_cfg, model_dir, dtype=args.dtype)
    teacher = make_teacher(TeacherConfig(kind="oracle"))
    # Warm up what is paid once per process: the math-verify workers, sympy for the leak guard,
    # kernels and allocator on the device.
    roll(tasks_for(2), student, teacher, args)

    measurements = []
    print(
        f"{args.arch}: {parameters / 1e6:.2f}M parameters on {student.device}, "
        f"{args.max_turns} turns x {args.max_new_tokens} new tokens, "
        f"torch threads {torch.get_num_threads()}",
        flush=True,
    )
    print(
        f"{'B':>4} {'batched ep/s':>13} {'one-by-one ep/s':>16} {'speed-up':>9} "
        f"{'batched tok/s':>14} {'one-by-one tok/s':>17}"
    )
    for batch_size in args.batch_sizes:
        result = measure(batch_size, student, teacher, args).as_dict()
        measurements.append(result)
        print(
            f"{batch_size:>4} {result['batched_episodes_per_s']:>13.2f} "
            f"{result['sequential_episodes_per_s']:>16.2f} {result['episodes_speedup']:>8.1f}x "
            f"{result['batched_tokens_per_s']:>14.1f} {result['sequential_tokens_per_s']:>17.1f}",
            flush=True,
        )
    student.close()

    largest = measurements[-1]
    device_name = (
        torch.cuda.get_device_name(student.device)
        if student.device.type == "cuda"
        else platform.processor() or platform.machine()
    )
    result = {
        "benchmark": "rollout_throughput",
        "arch": args.arch,
        "parameters": parameters,
        "device": str(student.device),
        "device_name": device_name,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "max_turns": args.max_turns,
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "dtype": args.dtype,
        "measurements": measurements,
        "largest_batch": largest["batch_size"],
        "episodes_speedup_at_largest": largest["episodes_speedup"],
        "tokens_speedup_at_largest": largest["tokens_speedup"],
    }
    at_64 = next((m for m in measurements if m["batch_size"] == 64), None)
    if at_64 is not None:
        result["ratio_at_64"] = at_64["episodes_speedup"]
    print("RESULT " + json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
