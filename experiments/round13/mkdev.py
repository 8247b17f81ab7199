"""mkdev.py OUT: a dev split for choosing critic settings without touching eval_id. It draws
fresh tasks from eval_id's own generators (params.yaml's in-distribution sources) with other
seeds, drops every prompt that is in train or eval_id, and keeps 200 (the sources' 3:1 mix).
Run from a project folder after `rl2f prepare` (it reads data/tasks/)."""

import dataclasses
import sys

from rl2f.config import load_config
from rl2f.tasks.io import read_tasks, write_tasks
from rl2f.tasks.sources import load_source

SEED_OFFSET = 1000  # far from every seed params.yaml uses
KEEP = {"basic_arithmetic": 150, "chain_sum": 50}

cfg = load_config("params.yaml")
seen = {
    t.prompt for split in ("train", "eval_id") for t in read_tasks(f"data/tasks/{split}.parquet")
}
dev = []
for source in cfg.data.sources:
    if "eval_id" not in source.splits:
        continue
    fresh = load_source(source.model_copy(update={"seed": source.seed + SEED_OFFSET}))
    unseen = []
    for task in fresh:  # in neither train nor eval_id, nor drawn twice
        if task.prompt not in seen:
            seen.add(task.prompt)
            unseen.append(task)
    dev += [dataclasses.replace(t, split="eval_id") for t in unseen[: KEEP[source.name]]]
    print(f"{source.name}: {len(fresh)} drawn, {len(unseen)} unseen, kept {KEEP[source.name]}")
write_tasks(sys.argv[1], dev)
print(f"dev: {len(dev)} tasks -> {sys.argv[1]}")
