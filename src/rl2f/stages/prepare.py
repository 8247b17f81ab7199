"""``rl2f prepare``: load every task source named in ``params.yaml`` (``data``), de-duplicate,
assign train / eval_id / eval_ood splits and write one Parquet file per split, plus
``summary.json`` with the counts by split and domain for DVC and for people."""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from rl2f.config import Config, SourceConfig
from rl2f.tasks.io import atomic_write_text, write_tasks
from rl2f.tasks.schema import EVAL_SPLIT_KEY, SPLITS, Task
from rl2f.tasks.sources import load_source
from rl2f.tasks.splits import SplitResult, assign_splits

logger = logging.getLogger(__name__)

SUMMARY_FILE = "summary.json"


def load_all(sources: list[SourceConfig]) -> list[tuple[SourceConfig, list[Task]]]:
    loaded = []
    with logging_redirect_tqdm():  # log lines above the bar instead of through it
        progress = tqdm(sources, desc="prepare", unit="source")
        for source in progress:
            progress.set_postfix_str(f"{source.kind}:{source.name}")
            tasks = load_source(source)
            if source.eval_split:
                tasks = [with_eval_split(task, source.eval_split) for task in tasks]
            logger.info("%s:%s: %d tasks", source.kind, source.name, len(tasks))
            loaded.append((source, tasks))
    return loaded


def with_eval_split(task: Task, name: str) -> Task:
    """Tag an out-of-distribution task with the evaluation split it is reported under."""
    return replace(task, metadata={**task.metadata, EVAL_SPLIT_KEY: name})


def build_summary(
    result: SplitResult, loaded: list[tuple[SourceConfig, list[Task]]]
) -> dict[str, Any]:
    """Counts by split and domain, every split and every domain present, zeros included, so
    the file has the same shape whatever the sources produced."""
    domains = sorted({task.domain for tasks in result.splits.values() for task in tasks})
    counts = {}
    for split in SPLITS:
        per_domain = Counter(task.domain for task in result.splits[split])
        counts[split] = {domain: per_domain.get(domain, 0) for domain in domains}
    return {
        "counts": counts,
        "totals": result.counts(),
        "duplicates_dropped": result.duplicates_dropped,
        "cross_split_dropped": result.cross_split_dropped,
        "sources": [
            {"kind": source.kind, "name": source.name, "loaded": len(tasks)}
            for source, tasks in loaded
        ],
    }


def format_table(counts: dict[str, dict[str, int]]) -> str:
    """Domains as rows, splits as columns, with totals both ways."""
    frame = pd.DataFrame(counts, columns=list(SPLITS)).fillna(0).astype(int)
    frame["total"] = frame.sum(axis=1)
    frame.loc["total"] = frame.sum(axis=0)
    frame.index.name = "domain"
    return frame.to_string()


def run(cfg: Config) -> dict[str, Any]:
    data = cfg.data
    loaded = load_all(data.sources)
    result = assign_splits(loaded, data.eval_fraction, data.seed)

    out_dir = Path(data.out_dir)
    for split, tasks in result.splits.items():
        if not tasks:
            logger.warning("split %s is empty", split)
        write_tasks(out_dir / f"{split}.parquet", tasks)
    summary = build_summary(result, loaded)
    atomic_write_text(out_dir / SUMMARY_FILE, json.dumps(summary, indent=2, sort_keys=True) + "\n")

    print(format_table(summary["counts"]))
    logger.info(
        "wrote %s to %s",
        ", ".join(f"{n} {split}" for split, n in summary["totals"].items()),
        out_dir,
    )
    return summary
