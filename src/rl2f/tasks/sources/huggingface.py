"""Tasks from a Hugging Face dataset: a hub id (e.g. a MATH or Omni-MATH style set with
problem/answer/solution columns) or a local directory (``save_to_disk`` output, or a folder of
Parquet/JSON/CSV files).

Without network ``datasets`` retries the hub for about half a minute before failing with a
message about README files. A pipeline stage should instead fail at once and say what to do,
so the hub is probed with a short timeout first, and offline mode gets its own message.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import datasets
from datasets.exceptions import DatasetsError
from huggingface_hub import constants as hub_constants

from rl2f.config import SourceConfig
from rl2f.errors import DataError, UserError
from rl2f.tasks.schema import Task
from rl2f.tasks.sources import subset_indices
from rl2f.tasks.sources.files import check_mapped_columns, records_to_tasks, resolve_columns

HUB_PROBE_TIMEOUT_S = 5.0
SAVED_DATASET_MARKERS = ("dataset_dict.json", "state.json")
LOAD_ERRORS = (DatasetsError, OSError, ValueError)  # ConnectionError is an OSError


def hub_unreachable_reason(timeout_s: float = HUB_PROBE_TIMEOUT_S) -> str | None:
    """Why the hub cannot be used right now, or None when it answers.

    Any HTTP status counts as reachable: only the connection matters here, and the real
    request reports auth or not-found errors itself. urllib honours the proxy variables.
    """
    request = urllib.request.Request(hub_constants.ENDPOINT, method="HEAD")
    try:
        urllib.request.urlopen(request, timeout=timeout_s).close()
    except urllib.error.HTTPError:
        return None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return f"cannot reach {hub_constants.ENDPOINT} within {timeout_s:g}s ({reason})"
    return None


def select_split(loaded: Any, source: SourceConfig, where: str) -> datasets.Dataset:
    if isinstance(loaded, datasets.DatasetDict):
        if source.hf_split not in loaded:
            raise UserError(
                f"{where}: no split {source.hf_split!r} (splits: {', '.join(loaded)}); set hf_split"
            )
        return loaded[source.hf_split]
    return loaded


def open_local(path: Path, source: SourceConfig) -> datasets.Dataset:
    where = str(path)
    try:
        if any((path / marker).exists() for marker in SAVED_DATASET_MARKERS):
            return select_split(datasets.load_from_disk(str(path)), source, where)
        return datasets.load_dataset(str(path), source.subset, split=source.hf_split)
    except LOAD_ERRORS as exc:
        raise DataError(f"{where}: cannot load as a Hugging Face dataset ({exc})") from None


def open_hub(source: SourceConfig) -> datasets.Dataset:
    where = f"huggingface source {source.name!r}"
    if not datasets.config.HF_HUB_OFFLINE:
        reason = hub_unreachable_reason()
        if reason is not None:
            raise UserError(
                f"{where}: {reason}; set HF_HUB_OFFLINE=1 to use a cached copy, "
                "or set name to a local dataset directory"
            )
    try:
        return datasets.load_dataset(source.name, source.subset, split=source.hf_split)
    except LOAD_ERRORS as exc:
        if datasets.config.HF_HUB_OFFLINE:
            raise UserError(
                f"{where}: not in the local Hugging Face cache and HF_HUB_OFFLINE is set; "
                "download it once with network access, or set name to a local dataset directory"
            ) from None
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{where}: {first_line}") from None


def open_dataset(source: SourceConfig) -> datasets.Dataset:
    path = Path(source.name).expanduser()
    return open_local(path, source) if path.exists() else open_hub(source)


def load(source: SourceConfig) -> list[Task]:
    dataset = open_dataset(source)
    where = f"huggingface source {source.name!r} (split {source.hf_split!r})"
    mapping = resolve_columns(source.columns, where)
    check_mapped_columns(source.columns, mapping, dataset.column_names, where)
    indices = subset_indices(len(dataset), source.size, source.seed)
    # Row numbers stay those of the full split, so an error points at the right record.
    row_numbers = [index + 1 for index in indices]
    rows = zip(row_numbers, dataset.select(indices), strict=True)
    label = f"huggingface:{source.name}" + (f":{source.subset}" if source.subset else "")
    tasks = records_to_tasks(rows, source, mapping, where, label)
    if not tasks:
        raise DataError(f"{where}: no rows")
    return tasks
