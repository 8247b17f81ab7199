"""Where evaluation episodes live: ``<episodes_dir>/<model>/<split>/<mode>.parquet`` and, for
the sycophancy probe, ``<mode>.probe.parquet`` beside it.

One directory per model because Kubeflow evaluates each model in its own task and then copies
the per-model outputs into one workspace: distinct paths merge without conflicts.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from rl2f.episodes import Episode, read_episodes, write_episodes
from rl2f.errors import DataError

MAIN_SUFFIX = ".parquet"
PROBE_SUFFIX = ".probe.parquet"


@dataclass(frozen=True)
class StoredCell:
    model: str
    split: str
    mode: str
    episodes: list[Episode]
    probes: list[Episode]


def cell_path(episodes_dir: str | os.PathLike[str], model: str, split: str, mode: str) -> Path:
    return Path(episodes_dir) / model / split / f"{mode}{MAIN_SUFFIX}"


def probe_path(episodes_dir: str | os.PathLike[str], model: str, split: str, mode: str) -> Path:
    return Path(episodes_dir) / model / split / f"{mode}{PROBE_SUFFIX}"


def clear_model(episodes_dir: str | os.PathLike[str], model: str) -> None:
    """Drop a model's earlier episodes, so a split or mode no longer evaluated leaves no stale
    file behind."""
    shutil.rmtree(Path(episodes_dir) / model, ignore_errors=True)


def write_cell(
    episodes_dir: str | os.PathLike[str],
    model: str,
    split: str,
    mode: str,
    episodes: list[Episode],
    probes: list[Episode],
) -> None:
    write_episodes(cell_path(episodes_dir, model, split, mode), episodes)
    probe = probe_path(episodes_dir, model, split, mode)
    if probes:
        write_episodes(probe, probes)
    else:
        probe.unlink(missing_ok=True)


def read_model_cells(episodes_dir: str | os.PathLike[str], model: str) -> list[StoredCell]:
    """Every stored cell of ``model``; an empty list when it has no episode directory."""
    root = Path(episodes_dir) / model
    cells = []
    for path in sorted(root.glob(f"*/*{MAIN_SUFFIX}")):
        if path.name.endswith(PROBE_SUFFIX):
            continue
        split, mode = path.parent.name, path.name.removesuffix(MAIN_SUFFIX)
        probe = probe_path(episodes_dir, model, split, mode)
        episodes = read_episodes(path)
        if not episodes:
            raise DataError(f"{path}: no episodes")
        probes = read_episodes(probe) if probe.exists() else []
        cells.append(StoredCell(model, split, mode, episodes, probes))
    return cells
