"""ana16.py BASE NAME... [--minus A B]...: one row per model on the split `eval.sh` rated (the dev
split, or `eval_id` itself in the seventeenth round; both sit in the eval_id slot), from ep/NAME
and reports/NAME.json.

Turn-1 and turn-6 accuracy with critiques and with retries, the paired difference from BASE with
critiques at turn 6, critique minus retry at turn 6, and how often a changed wrong number moved
the answer's way after a critique and after a retry (`toward_rate` in the evaluation's
metrics). Intervals come from the package's `paired_difference`, the method behind
reports/comparisons.json (1,000 resamples, the evaluation's seed). `--minus A B` adds A - B
with critiques at turns 1 and 6 and with retries at turn 6 (e.g. a later checkpoint against an
earlier one).
"""

import argparse
import json
from functools import cache
from pathlib import Path

from rl2f.episodes import read_episodes
from rl2f.evaluation.comparisons import paired_difference

TURN = 6
SAMPLES, SEED = 1000, 1234  # params.yaml: eval.bootstrap_samples, eval.seed


@cache
def cell(name, mode):
    return tuple(read_episodes(f"ep/{name}/{name}/eval_id/{mode}.parquet"))


def accuracy(name, mode, turn):
    episodes = cell(name, mode)
    return sum(e.solved_at is not None and e.solved_at <= turn for e in episodes) / len(episodes)


def minus(a, b, turn=TURN):
    """a - b at ``turn``, with its paired 95% interval, as text."""
    result = paired_difference(a, b, TURN, SAMPLES, SEED)
    lo, hi = result.ci95_by_turn[turn - 1]
    return f"{result.diff_by_turn[turn - 1]:+.3f} [{lo:+.3f}, {hi:+.3f}]"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("base")
    parser.add_argument("names", nargs="*")
    parser.add_argument("--minus", nargs=2, action="append", default=[], metavar=("A", "B"))
    args = parser.parse_args()
    print(
        "| model | t1 | teacher t6 | retry t6 | minus base, teacher t6 | critique - retry, t6 "
        "| answer's way after a critique / retry |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name in [args.base, *args.names]:
        metrics = json.loads(Path(f"reports/{name}.json").read_text())[name]["eval_id"]
        way = " / ".join(f"{metrics[m]['toward_rate']:.3f}" for m in ("teacher", "retry"))
        teacher, retry = cell(name, "teacher"), cell(name, "retry")
        vs_base = "" if name == args.base else minus(teacher, cell(args.base, "teacher"))
        print(
            f"| {name} | {accuracy(name, 'teacher', 1):.3f} | "
            f"{accuracy(name, 'teacher', TURN):.3f} | {accuracy(name, 'retry', TURN):.3f} | "
            f"{vs_base} | {minus(teacher, retry)} | {way} |"
        )
    for a, b in args.minus:
        teacher_a, teacher_b = cell(a, "teacher"), cell(b, "teacher")
        print(f"{a} - {b}, teacher, turn 1: {minus(teacher_a, teacher_b, turn=1)}")
        for mode in ("teacher", "retry"):
            print(f"{a} - {b}, {mode}, turn {TURN}: {minus(cell(a, mode), cell(b, mode))}")


if __name__ == "__main__":
    main()
