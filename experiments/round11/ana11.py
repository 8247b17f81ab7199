"""Round 11 reader: accuracy at a turn, paired intervals over tasks, and the edits' direction.

ana11.py EPISODES_DIR MODEL_A MODEL_B [--split eval_id] [--turn 6]
prints, per mode, accuracy at the turn of A and B and the paired difference A - B (bootstrap
over tasks, 2000 resamples), then critique-minus-retry of A, then A's edits after a critique and
after a retry (share that go the answer's way) with the gap's interval over tasks.
"""
import argparse
import random
import re
from collections import defaultdict
from pathlib import Path

from rl2f.episodes import read_episodes

EDIT = re.compile(r"\s*(-?\d+)\s*([+-])\s*(\d+)\s*=")


def by_task(path, turn):
    acc = defaultdict(list)
    for e in read_episodes(path):
        acc[e.task_id].append(float(e.solved_at is not None and e.solved_at <= turn))
    return {k: sum(v) / len(v) for k, v in acc.items()}


def boot(diffs, n=2000, seed=0):
    rng = random.Random(seed)
    keys = list(diffs)
    means = sorted(
        sum(diffs[k] for k in (rng.choice(keys) for _ in keys)) / len(keys) for _ in range(n)
    )
    return sum(diffs.values()) / len(keys), means[int(0.025 * n)], means[int(0.975 * n)]


AGREE = [0, 0, 0, 0]  # edits, edits whose answer moved, moved the operator's way, right


def edits(path):
    """task -> [n answer's way, n edits] over the attempts that edit the last answer."""
    out = defaultdict(lambda: [0, 0])
    total_after = 0
    for e in read_episodes(path):
        st = e.student_turns
        for before, after in zip(st, st[1:]):
            total_after += 1
            err = before.error_from_answer
            m = EDIT.match(after.text)
            if err is None or not err or m is None or before.extracted is None:
                continue
            try:
                if int(m.group(1)) != int(float(before.extracted)):
                    continue
            except ValueError:
                continue
            out[e.task_id][1] += 1
            out[e.task_id][0] += (m.group(2) == "-") == (err > 0)
            AGREE[0] += 1
            new = after.error_from_answer
            if new is not None and new != err:
                AGREE[1] += 1
                AGREE[2] += (new < err) == (m.group(2) == "-")
                AGREE[3] += bool(after.correct)
    return out, total_after


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("root")
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--split", default="eval_id")
    ap.add_argument("--turn", type=int, default=6)
    args = ap.parse_args()
    root = Path(args.root)
    for mode in ("teacher", "retry"):
        pa, pb = (root / m / m / args.split / f"{mode}.parquet" for m in (args.a, args.b))
        if not (pa.exists() and pb.exists()):
            continue
        a, b = by_task(pa, args.turn), by_task(pb, args.turn)
        a1 = by_task(pa, 1)
        d = {k: a[k] - b[k] for k in a if k in b}
        mean, lo, hi = boot(d)
        print(f"{mode}: {args.a} t1 {sum(a1.values())/len(a1):.3f} t{args.turn} "
              f"{sum(a.values())/len(a):.3f}  {args.b} {sum(b.values())/len(b):.3f}  "
              f"diff {mean:+.3f} [{lo:+.3f}, {hi:+.3f}]")
    pt, pr = (root / args.a / args.a / args.split / f"{m}.parquet" for m in ("teacher", "retry"))
    if pt.exists() and pr.exists():
        t, r = by_task(pt, args.turn), by_task(pr, args.turn)
        mean, lo, hi = boot({k: t[k] - r[k] for k in t})
        print(f"{args.a} critique - retry t{args.turn}: {mean:+.3f} [{lo:+.3f}, {hi:+.3f}]")
        et, nt = edits(pt)
        er, nr = edits(pr)
        for name, e, n in (("critique", et, nt), ("retry", er, nr)):
            way = sum(v[0] for v in e.values())
            cnt = sum(v[1] for v in e.values())
            print(f"  after a {name}: {cnt}/{n} later attempts edit the last answer "
                  f"({cnt/max(n,1):.1%}); answer's way {way/max(cnt,1):.3f}")
        print(f"  edits after a critique or a retry, together {AGREE[0]}: answer moved in {AGREE[1]}, the operator's way in {AGREE[2]} "
              f"({AGREE[2]/max(AGREE[1],1):.1%}), right {AGREE[3]} ({AGREE[3]/max(AGREE[0],1):.1%})")
        share = {k: et[k][0] / et[k][1] - er[k][0] / er[k][1]
                 for k in et if et[k][1] and er[k][1]}
        if share:
            mean, lo, hi = boot(share)
            print(f"  answer's way, critique - retry (tasks with edits in both, n={len(share)}): "
                  f"{mean:+.3f} [{lo:+.3f}, {hi:+.3f}]")


if __name__ == "__main__":
    main()
