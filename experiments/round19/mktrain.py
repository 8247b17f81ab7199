"""mktrain.py DEV OUT: a train split of fresh tasks, enough that single-turn GRPO never sees a task
twice (600 steps x 8 tasks = 4,800). Draws from the train split's own generators (params.yaml's
in-distribution sources) with other seeds than the shipped split and the dev split, drops every
prompt in train, eval_id or DEV, and keeps the shipped split's 3:1 mix.
Run from a project folder after `rl2f prepare` (it reads data/tasks/)."""

import dataclasses
import sys

from rl2f.config import load_config
from rl2f.tasks.io import read_tasks, write_tasks
from rl2f.tasks.sources import load_source

SEED_OFFSET = 2000  # mkdev.py uses 1000
KEEP = {"basic_arithmetic": 3600, "chain_sum": 1200}

cfg = load_config("params.yaml")
seen = {
    t.prompt for split in ("train", "eval_id") for t in read_tasks(f"data/tasks/{split}.parquet")
}
seen |= {t.prompt for t in read_tasks(sys.argv[1])}
train = []
for source in cfg.data.sources:
    if "train" not in source.splits:
        continue
    draw = KEEP[source.name] * 2
    fresh = load_source(source.model_copy(update={"seed": source.seed + SEED_OFFSET, "size": draw}))
    unseen = []
    for task in fresh:  # in none of the shipped splits nor dev, nor drawn twice
        if task.prompt not in seen:
            seen.add(task.prompt)
            unseen.append(task)
    if len(unseen) < KEEP[source.name]:
        sys.exit(f"{source.name}: only {len(unseen)} unseen tasks in {draw} drawn")
    train += [dataclasses.replace(t, split="train") for t in unseen[: KEEP[source.name]]]
    print(f"{source.name}: {draw} drawn, {len(unseen)} unseen, kept {KEEP[source.name]}")
write_tasks(sys.argv[2], train)
print(f"train: {len(train)} tasks -> {sys.argv[2]}")
