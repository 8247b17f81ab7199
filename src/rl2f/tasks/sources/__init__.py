"""Task sources: each kind of :class:`~rl2f.config.SourceConfig` has one loader module with a
``load(source) -> list[Task]`` function.

Loaders are imported only when their kind is used, so a run over procedurally generated tasks
never pays for importing ``datasets``, and a run over a local file never imports the generators.
"""

from __future__ import annotations

import importlib
import random

from rl2f.config import SourceConfig
from rl2f.tasks.schema import Task

LOADERS: dict[str, str] = {
    "reasoning_gym": "rl2f.tasks.sources.reasoning_gym",
    "humaneval": "rl2f.tasks.sources.humaneval",
    "file": "rl2f.tasks.sources.files",
    "huggingface": "rl2f.tasks.sources.huggingface",
}


def load_source(source: SourceConfig) -> list[Task]:
    """All tasks of one source, in the source's own order; splits are assigned later."""
    return importlib.import_module(LOADERS[source.kind]).load(source)


def subset_indices(total: int, size: int, seed: int) -> list[int]:
    """Which rows of a fixed collection a source of ``size`` takes.

    Sampling (not the first ``size`` rows) keeps a small subset representative of a collection
    sorted by topic or difficulty; the indices come back in collection order so the output
    reads like the original. The same ``(total, size, seed)`` always gives the same rows.
    """
    if size >= total:
        return list(range(total))
    return sorted(random.Random(seed).sample(range(total), size))


__all__ = ["LOADERS", "load_source", "subset_indices"]
