"""ana16.py BASE NAME...: one row per model on the dev split, from ep/NAME and reports/NAME.json.

Turn-1 and turn-6 accuracy with critiques and with retries, the paired difference from BASE with
critiques at turn 6, critique minus retry at turn 6 (both bootstrapped over tasks, 2000
resamples), and how often a changed wrong number moved the answer's way after a critique and
after a retry (`toward_rate` in the evaluation's metrics).
"""

import json
import random
import sys
from collections import defaultdict
from pathlib import Path

from rl2f.episodes import read_episodes

TURN = 6


def by_task(name, mode, turn):
    solved = defaultdict(list)
    for e in read_episodes(f"ep/{name}/{name}/eval_id/{mode}.parquet"):
        solved[e.task_id].append(float(e.solved_at is not None and e.solved_at <= turn))
    return {task: sum(v) / len(v) for task, v in solved.items()}


def mean(values):
    values = list(values)
    return sum(values) / len(values)


def paired(a, b, n=2000, seed=0):
    diffs = [a[k] - b[k] for k in a]
    rng = random.Random(seed)
    means = sorted(mean(rng.choice(diffs) for _ in diffs) for _ in range(n))
    return f"{mean(diffs):+.3f} [{means[int(0.025 * n)]:+.3f}, {means[int(0.975 * n)]:+.3f}]"


def main():
    base, names = sys.argv[1], sys.argv[2:]
    base_t = by_task(base, "teacher", TURN)
    print(
        "| model | t1 | teacher t6 | retry t6 | minus base, teacher t6 | critique - retry, t6 "
        "| answer's way after a critique / retry |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name in [base, *names]:
        t1 = by_task(name, "teacher", 1)
        t6, r6 = by_task(name, "teacher", TURN), by_task(name, "retry", TURN)
        metrics = json.loads(Path(f"reports/{name}.json").read_text())[name]["eval_id"]
        way = " / ".join(f"{metrics[m]['toward_rate']:.3f}" for m in ("teacher", "retry"))
        vs_base = "" if name == base else paired(t6, base_t)
        print(
            f"| {name} | {mean(t1.values()):.3f} | {mean(t6.values()):.3f} | "
            f"{mean(r6.values()):.3f} | {vs_base} | {paired(t6, r6)} | {way} |"
        )


if __name__ == "__main__":
    main()
