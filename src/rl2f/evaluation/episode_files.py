"""Where evaluation episodes live: ``<episodes_dir>/<model>/<split>/<mode>.parquet`` and, for
the sycophancy probe, ``<mode>.probe.parquet`` beside it.

One directory per model because Kubeflow evaluates each model in its own task and then copies
the per-model outputs into one workspace: distinct paths merge without conflicts.

While a model is evaluated, each finished cell is kept in the same layout under a scratch
folder (``<episodes_dir>.partial``) with a record of what it was rolled out under
(``<mode>.cell.json``, written last, so a cell without it is unfinished). A rerun after a crash
reuses the cells whose record matches; the model's folder is published whole at the end.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rl2f.episodes import Episode, read_episodes, write_episodes
from rl2f.errors import DataError
from rl2f.tasks.io import atomic_write_text, replace_dir, staging_dir

MAIN_SUFFIX = ".parquet"
PROBE_SUFFIX = ".probe.parquet"
RECORD_SUFFIX = ".cell.json"


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


# ---------------------------------------------------------------- finished cells (scratch)
def record_path(scratch: str | os.PathLike[str], model: str, split: str, mode: str) -> Path:
    return Path(scratch) / model / split / f"{mode}{RECORD_SUFFIX}"


def save_finished_cell(
    scratch: str | os.PathLike[str],
    cell: StoredCell,
    record: dict[str, Any],
) -> None:
    """Keep a finished cell in ``scratch``; ``record`` (its settings key and what its metrics
    need besides the episodes) is written last and marks it finished."""
    write_cell(scratch, cell.model, cell.split, cell.mode, cell.episodes, cell.probes)
    path = record_path(scratch, cell.model, cell.split, cell.mode)
    atomic_write_text(path, json.dumps(record, sort_keys=True) + "\n")


def load_finished_cell(
    scratch: str | os.PathLike[str], model: str, split: str, mode: str, key: str
) -> tuple[StoredCell, dict[str, Any]] | None:
    """The cell kept in ``scratch`` and its record, if it was finished under ``key``."""
    path = record_path(scratch, model, split, mode)
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    if record.get("key") != key:
        return None
    main, probe = cell_path(scratch, model, split, mode), probe_path(scratch, model, split, mode)
    probes = read_episodes(probe) if probe.exists() else []
    return StoredCell(model, split, mode, read_episodes(main), probes), record


def publish_model(
    episodes_dir: str | os.PathLike[str], model: str, cells: list[StoredCell]
) -> None:
    """Replace ``model``'s folder with exactly ``cells`` in one rename: readers never see some
    cells of this run beside others of an earlier one, and no stale split or mode survives."""
    staging = staging_dir(Path(episodes_dir) / model)
    for cell in cells:
        write_cell(staging.parent, staging.name, cell.split, cell.mode, cell.episodes, cell.probes)
    replace_dir(staging, Path(episodes_dir) / model)
