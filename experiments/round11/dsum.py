"""dsum.py MODEL [MODE]: of the edits of the last answer with the operator the answer's way, how
often the written sum is right, how often d is the true distance, and both."""
import re
import sys
from collections import Counter

from rl2f.episodes import read_episodes

EDIT = re.compile(r"\s*(-?\d+)\s*([+-])\s*(\d+)\s*=\s*(-?\d+)")
name, mode = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else "teacher")
n = sum_ok = d_ok = both = 0
dist = Counter()
for e in read_episodes(f"data/episodes/{name}/{name}/eval_id/{mode}.parquet"):
    st = e.student_turns
    for before, after in zip(st, st[1:]):
        err = before.error_from_answer
        m = EDIT.match(after.text)
        if not err or m is None or before.extracted is None:
            continue
        c, op, d, y = int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))
        try:
            if c != int(float(before.extracted)):
                continue
        except ValueError:
            continue
        if (op == "-") != (err > 0):
            continue
        n += 1
        s = (c - d if op == "-" else c + d) == y
        k = d == abs(err)
        sum_ok += s
        d_ok += k
        both += s and k
        dist[int(abs(err))] += 1
print(f"{name}/{mode}: {n} right-way edits; sum right {sum_ok/n:.1%}, d = |error| {d_ok/n:.1%}, both {both/n:.1%}")
print("  |error| of the edited answers:", sorted(dist.items())[:12])
