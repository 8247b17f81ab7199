"""mkdev.py: after `rl2f prepare`, make data/tasks/eval_id.parquet the dev split (200 training
tasks drawn with seed 2026, removed from data/tasks/train.parquet). Run in a scratch copy of the
project, never in the one whose eval_id numbers are reported."""
import dataclasses
import random

from rl2f.tasks.io import read_tasks, write_tasks

train = read_tasks("data/tasks/train.parquet")
chosen = set(random.Random(2026).sample(range(len(train)), 200))
dev = [dataclasses.replace(t, split="eval_id") for i, t in enumerate(train) if i in chosen]
rest = [t for i, t in enumerate(train) if i not in chosen]
write_tasks("data/tasks/eval_id.parquet", dev)
write_tasks("data/tasks/train.parquet", rest)
print(f"dev {len(dev)}, train {len(rest)}")
