"""Round 13 reader: self mode on dev. For each model folder under EPISODES_DIR, accuracy at turn
T, the paired difference from a reference model (bootstrap over tasks), and what its
self-critiques are: the oracle's direction phrasing (and whether the stated direction is right),
another attempt ("... Answer: n"), or other text.

ana13.py EPISODES_DIR REF MODEL [MODEL ...] [--turn 6] [--split eval_id]
"""

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

from rl2f.episodes import read_episodes
from rl2f.teachers.oracle import PHRASES

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "round11"))
from ana11 import boot, by_task  # noqa: E402  (round 11's reader: accuracy and paired intervals)

HIGH = tuple(p.lower() for p in PHRASES["too_high"])
LOW = tuple(p.lower() for p in PHRASES["too_low"])


def critiques(path):
    """Counts of critique kinds, and of stated directions that are right."""
    kinds = Counter()
    for e in read_episodes(path):
        turns = e.turns
        for before, critique in zip(turns, turns[1:], strict=False):
            if before.role != "student" or critique.role == "student":
                continue
            text = critique.text.lower()
            err = before.error_from_answer
            if any(p in text for p in HIGH) or any(p in text for p in LOW):
                says_high = any(p in text for p in HIGH)
                kinds["direction"] += 1
                if err:
                    kinds["direction_right"] += says_high == (err > 0)
                    kinds["direction_known"] += 1
            elif "answer:" in text or re.match(r"\s*-?\d+\s*[+-]", text):
                kinds["attempt"] += 1
            else:
                kinds["other"] += 1
            kinds["all"] += 1
    return kinds


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("root")
    ap.add_argument("ref")
    ap.add_argument("models", nargs="+")
    ap.add_argument("--turn", type=int, default=6)
    ap.add_argument("--split", default="eval_id")
    ap.add_argument("--mode", default="self")
    args = ap.parse_args()
    root = Path(args.root)
    path = lambda m: root / m / m / args.split / f"{args.mode}.parquet"  # noqa: E731
    ref = by_task(path(args.ref), args.turn)
    print(f"{args.ref}: t{args.turn} {sum(ref.values()) / len(ref):.3f}")
    for model in args.models:
        acc = by_task(path(model), args.turn)
        mean, lo, hi = boot({k: acc[k] - ref[k] for k in ref})
        k = critiques(path(model))
        right = (
            k["direction_right"] / k["direction_known"] if k["direction_known"] else float("nan")
        )
        share = {kind: k[kind] / k["all"] for kind in ("direction", "attempt", "other")}
        print(
            f"{model}: t1 {sum(by_task(path(model), 1).values()) / len(acc):.3f} "
            f"t{args.turn} {sum(acc.values()) / len(acc):.3f}  - {args.ref} {mean:+.3f} "
            f"[{lo:+.3f}, {hi:+.3f}]  critiques {k['all']}: direction {share['direction']:.2f} "
            f"(right {right:.2f}), attempt {share['attempt']:.2f}, other {share['other']:.2f}"
        )


if __name__ == "__main__":
    main()
