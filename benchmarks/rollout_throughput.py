"""Throughput of the batched didactic loop against one episode at a time and the bare model.

For each batch size B, the same B tasks are rolled out in the same process:

- batched: :func:`rl2f.rollout.run_episodes` with all B episodes in flight (every turn one
  batched student call, concurrent verification, one batched teacher call), the student
  keeping each conversation's KV cache between turns (a session);
- whole prompts: the same, but the student re-reads the whole conversation every turn (what
  it did before sessions, and what every engine without sessions does);
- one at a time: one ``run_episodes`` call per episode.

Each is run ``--repeats`` times and the median counts. The whole loop is timed (student,
verifier, oracle teacher, leak guard), not just generation; the time spent inside the student is
reported as well. At the largest B, one batched ``model.generate`` over the same first-turn
prompts (same temperature and max_new_tokens) gives the token rate of the bare model, the
ceiling the rollout's student tokens/s is measured against; ``generate`` one prompt at a time
shows how much batching can gain on the machine at all.

The student is randomly initialised: throughput does not depend on the weights, and a random
model never solves a task, so every episode runs all ``--max-turns`` turns. A random model
rarely samples its end-of-turn token, so attempts are close to ``--max-new-tokens`` long; token
rates are reported as well so unequal lengths cannot flatter either side.

    python benchmarks/rollout_throughput.py                      # CPU, bootstrapped tiny size
    python benchmarks/rollout_throughput.py --arch qwen2.5-0.5b --device cuda

``qwen2.5-0.5b`` builds Qwen2.5-0.5B's shapes (24 layers, hidden 896, 151,936-token vocabulary)
with random weights. The tokenizer stays the small trained one: ids it does not know decode to
nothing, which changes the text the verifier sees but not the compute the model does.

The last line is ``RESULT {json}`` with every measurement and the ratios at the largest B.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Hashable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from transformers import Qwen2Config, Qwen2ForCausalLM  # noqa: E402

from rl2f.config import EngineConfig, SamplingConfig, TeacherConfig, TinyModelConfig  # noqa: E402
from rl2f.engines import (  # noqa: E402
    Generation,
    Message,
    StatelessSession,
    TokenSession,
    make_engine,
)
from rl2f.engines.transformers_engine import TransformersEngine  # noqa: E402
from rl2f.rollout import ChatTurns, RolloutSettings, run_episodes  # noqa: E402
from rl2f.tasks.schema import Task  # noqa: E402
from rl2f.teachers import make_teacher  # noqa: E402
from rl2f.teachers.base import Teacher  # noqa: E402
from rl2f.training.tiny_model import build_model, train_tokenizer  # noqa: E402

ARCHS = ("tiny", "qwen2.5-0.5b")
PROMPT = "Calculate {a} + {b}.\nGive your final answer after 'Answer:'."
TARGET_SPEEDUP = 20.0  # batched vs one at a time, at 64 episodes
TARGET_GENERATE_SHARE = 0.8  # rollout student tokens/s vs bare batched generate tokens/s


@dataclass(frozen=True)
class Run:
    """One timed ``run_episodes`` call (or, one at a time, the sum of many)."""

    seconds: float = 0.0
    student_seconds: float = 0.0
    tokens: int = 0

    def __add__(self, other: Run) -> Run:
        return Run(
            self.seconds + other.seconds,
            self.student_seconds + other.student_seconds,
            self.tokens + other.tokens,
        )

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds


@dataclass(frozen=True)
class Measurement:
    batch_size: int
    batched: Run
    whole_prompts: Run
    sequential: Run

    def as_dict(self) -> dict[str, object]:
        batched, whole, sequential = self.batched, self.whole_prompts, self.sequential
        return {
            "batch_size": self.batch_size,
            **{f"batched_{k}": v for k, v in asdict(batched).items()},
            **{f"whole_prompts_{k}": v for k, v in asdict(whole).items()},
            **{f"sequential_{k}": v for k, v in asdict(sequential).items()},
            "batched_episodes_per_s": round(self.batch_size / batched.seconds, 3),
            "whole_prompts_episodes_per_s": round(self.batch_size / whole.seconds, 3),
            "sequential_episodes_per_s": round(self.batch_size / sequential.seconds, 3),
            "batched_tokens_per_s": round(batched.tokens_per_s, 1),
            "whole_prompts_tokens_per_s": round(whole.tokens_per_s, 1),
            "sequential_tokens_per_s": round(sequential.tokens_per_s, 1),
            "episodes_speedup": round(sequential.seconds / batched.seconds, 2),
            "tokens_speedup": round(batched.tokens_per_s / sequential.tokens_per_s, 2),
            "student_speedup": round(sequential.student_seconds / batched.student_seconds, 2),
            "kv_carry_speedup": round(whole.seconds / batched.seconds, 2),
        }


class TimedStudent:
    """The student engine with a stopwatch on its generation, and a switch that hides its
    sessions so the rollout re-reads whole conversations."""

    def __init__(self, engine: TransformersEngine, *, carry_kv: bool) -> None:
        self.engine = engine
        self.carry_kv = carry_kv
        self.tokenizer = engine.tokenizer
        self.context_length = engine.context_length
        self.seconds = 0.0

    def session(self) -> TokenSession:
        inner = self.engine.session() if self.carry_kv else StatelessSession(self.engine)
        return _TimedSession(inner, self)

    def generate(
        self,
        prompts: list[list[int]],
        sampling: SamplingConfig,
        return_logprobs: bool = False,
        *,
        seeds: Sequence[int] | None = None,
    ) -> list[Generation]:
        session = _TimedSession(StatelessSession(self.engine), self)
        return session.generate(
            prompts, sampling, return_logprobs, keys=range(len(prompts)), seeds=seeds
        )

    def chat(self, conversations: list[list[Message]], sampling: SamplingConfig) -> list[str]:
        return self.engine.chat(conversations, sampling)

    def close(self) -> None:
        pass


class _TimedSession:
    def __init__(self, inner: TokenSession, clock: TimedStudent) -> None:
        self.inner, self.clock = inner, clock

    def generate(
        self,
        prompts: list[list[int]],
        sampling: SamplingConfig,
        return_logprobs: bool = False,
        *,
        keys: Sequence[Hashable],
        seeds: Sequence[int] | None = None,
    ) -> list[Generation]:
        started = time.perf_counter()
        try:
            return self.inner.generate(prompts, sampling, return_logprobs, keys=keys, seeds=seeds)
        finally:
            _synchronize(self.clock.engine.device)
            self.clock.seconds += time.perf_counter() - started

    def close(self) -> None:
        self.inner.close()


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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


def sampling_of(args: argparse.Namespace) -> SamplingConfig:
    return SamplingConfig(
        temperature=args.temperature, max_new_tokens=args.max_new_tokens, seed=args.seed
    )


def roll(
    tasks: list[Task], student: TimedStudent, teacher: Teacher, args: argparse.Namespace
) -> Run:
    """One timed run_episodes call over ``tasks``."""
    before = student.seconds
    started = time.perf_counter()
    episodes = run_episodes(
        tasks,
        student,
        teacher,
        RolloutSettings(
            sampling=sampling_of(args),
            num_generations=1,
            max_turns=args.max_turns,
            gamma=0.7,
            max_regenerations=2,
            fallback_message=TeacherConfig().fallback_message,
            progress=False,
        ),
        policy_name=args.arch,
    )
    _synchronize(student.engine.device)
    return Run(
        seconds=time.perf_counter() - started,
        student_seconds=student.seconds - before,
        tokens=sum(sum(episode.completion_mask) for episode in episodes),
    )


def measure(
    batch_size: int,
    carried: TimedStudent,
    whole: TimedStudent,
    teacher: Teacher,
    args: argparse.Namespace,
) -> Measurement:
    """Each way of rolling out ``--repeats`` times, interleaved so that a burst of load on a
    shared machine hits every way alike; the median run of each counts.

    One untimed run of each way comes first: the first call at a new batch shape pays for
    choosing kernels and growing the allocator and the verifier's worker pool. On a GPU with
    ``--repeats 1`` that once made the carried-cache run, always the first at its size, look
    4x slower than the whole-prompts run that followed it."""
    tasks = tasks_for(batch_size)
    roll(tasks[:1], carried, teacher, args)
    roll(tasks, carried, teacher, args)
    roll(tasks, whole, teacher, args)
    runs: dict[str, list[Run]] = {"batched": [], "whole_prompts": [], "sequential": []}
    for _ in range(args.repeats):
        runs["sequential"].append(sum((roll([t], carried, teacher, args) for t in tasks), Run()))
        runs["batched"].append(roll(tasks, carried, teacher, args))
        runs["whole_prompts"].append(roll(tasks, whole, teacher, args))
    return Measurement(batch_size, **{way: _median(found) for way, found in runs.items()})


def _median(runs: list[Run]) -> Run:
    return sorted(runs, key=lambda run: run.seconds)[len(runs) // 2]


def bare_generate(engine: TransformersEngine, tasks: list[Task], args: argparse.Namespace) -> Run:
    """One batched ``model.generate`` over the tasks' first-turn prompts: the bare model's token
    rate, with no rollout around it. Only temperature and max_new_tokens are set (top-k and top-p
    off), as in the rollout; tokens count up to each row's end-of-turn token."""
    chat = ChatTurns(engine.tokenizer)
    prompts = [chat.prompt_ids([{"role": "user", "content": task.prompt}]) for task in tasks]
    width = max(len(prompt) for prompt in prompts)
    input_ids = torch.tensor([[engine.pad_id] * (width - len(p)) + p for p in prompts])
    attention_mask = torch.arange(width) >= width - torch.tensor([[len(p)] for p in prompts])
    sampled = args.temperature > 0
    started = time.perf_counter()
    with torch.inference_mode():
        output = engine.model.generate(
            input_ids=input_ids.to(engine.device),
            attention_mask=attention_mask.long().to(engine.device),
            max_new_tokens=args.max_new_tokens,
            do_sample=sampled,
            temperature=args.temperature if sampled else None,
            top_k=None,
            top_p=None,
            pad_token_id=engine.pad_id,
        )
    _synchronize(engine.device)
    seconds = time.perf_counter() - started
    new_tokens = output[:, width:].tolist()
    tokens = sum(_length_to_stop(row, engine.stop_ids) for row in new_tokens)
    return Run(seconds, seconds, tokens)


def _length_to_stop(tokens: list[int], stop_ids: frozenset[int]) -> int:
    return next((i + 1 for i, token in enumerate(tokens) if token in stop_ids), len(tokens))


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
    parser.add_argument("--repeats", type=int, default=3, help="runs per measurement (median)")
    args = parser.parse_args(argv)
    try:
        args.batch_sizes = sorted({int(size) for size in args.batch_sizes.split(",")})
    except ValueError:
        parser.error(f"--batch-sizes: expected integers like 1,8,64, got {args.batch_sizes!r}")
    if args.batch_sizes[0] < 1:
        parser.error("--batch-sizes: sizes must be at least 1")
    return args


def print_row(result: dict[str, object]) -> None:
    print(
        f"{result['batch_size']:>4} {result['batched_episodes_per_s']:>13.2f} "
        f"{result['whole_prompts_episodes_per_s']:>13.2f} "
        f"{result['sequential_episodes_per_s']:>16.2f} {result['episodes_speedup']:>8.1f}x "
        f"{result['batched_tokens_per_s']:>14.1f} {result['sequential_tokens_per_s']:>17.1f} "
        f"{result['student_speedup']:>12.1f}x",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="rl2f-bench-") as model_dir:
        parameters = build_student(args.arch, Path(model_dir), args.seed)
        engine_cfg = EngineConfig(batch_size=max(args.batch_sizes), device=args.device)
        engine = make_engine(engine_cfg, model_dir, dtype=args.dtype)
    assert isinstance(engine, TransformersEngine)
    carried = TimedStudent(engine, carry_kv=True)
    whole = TimedStudent(engine, carry_kv=False)
    teacher = make_teacher(TeacherConfig(kind="oracle"))
    # Warm up what is paid once per process: the math-verify workers, sympy for the leak guard,
    # kernels and allocator on the device.
    roll(tasks_for(2), carried, teacher, args)
    bare_generate(engine, tasks_for(2), args)

    print(
        f"{args.arch}: {parameters / 1e6:.2f}M parameters on {engine.device}, "
        f"{args.max_turns} turns x {args.max_new_tokens} new tokens, "
        f"torch threads {torch.get_num_threads()}",
        flush=True,
    )
    print(
        f"{'B':>4} {'batched ep/s':>13} {'whole ep/s':>13} {'one-by-one ep/s':>16} "
        f"{'speed-up':>9} {'batched tok/s':>14} {'one-by-one tok/s':>17} {'student only':>13}"
    )
    measurements = []
    for batch_size in args.batch_sizes:
        measurements.append(measure(batch_size, carried, whole, teacher, args).as_dict())
        print_row(measurements[-1])

    largest = measurements[-1]
    tasks = tasks_for(largest["batch_size"])
    bare = _median([bare_generate(engine, tasks, args) for _ in range(args.repeats)])
    bare_alone = sum((bare_generate(engine, [task], args) for task in tasks[:8]), Run())
    generate_share = largest["batched_tokens_per_s"] / bare.tokens_per_s
    student_share = (
        largest["batched_tokens"] / largest["batched_student_seconds"] / bare.tokens_per_s
    )
    print(
        f"bare model.generate: {bare.tokens_per_s:.1f} tokens/s at B={largest['batch_size']}, "
        f"{bare_alone.tokens_per_s:.1f} one prompt at a time "
        f"({bare.tokens_per_s / bare_alone.tokens_per_s:.1f}x); the batched rollout reaches "
        f"{generate_share:.0%} of the batched rate (target {TARGET_GENERATE_SHARE:.0%}), its "
        f"student alone {student_share:.0%}"
    )
    engine.close()

    device_name = (
        torch.cuda.get_device_name(engine.device)
        if engine.device.type == "cuda"
        else platform.processor() or platform.machine()
    )
    result = {
        "benchmark": "rollout_throughput",
        "arch": args.arch,
        "parameters": parameters,
        "device": str(engine.device),
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
        "kv_carry_speedup_at_largest": largest["kv_carry_speedup"],
        "bare_generate_tokens_per_s": round(bare.tokens_per_s, 1),
        "bare_generate_one_at_a_time_tokens_per_s": round(bare_alone.tokens_per_s, 1),
        "bare_generate_speedup": round(bare.tokens_per_s / bare_alone.tokens_per_s, 2),
        "rollout_vs_bare_generate": round(generate_share, 3),
        "rollout_student_vs_bare_generate": round(student_share, 3),
    }
    at_64 = next((m for m in measurements if m["batch_size"] == 64), None)
    if at_64 is not None:
        result["ratio_at_64"] = at_64["episodes_speedup"]
        print(
            f"batched vs one at a time at 64 episodes: {at_64['episodes_speedup']:.1f}x "
            f"(target {TARGET_SPEEDUP:.0f}x)"
        )
    print("RESULT " + json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
