"""Reading and writing task files, and the crash-safe file handling every stage shares. Writes
are atomic (temp file + rename) so an interrupted stage never leaves a half-written file that a
later stage would trust; work folders of resumable stages are claimed for their settings."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from rl2f.errors import DataError, one_line, parse_json_object
from rl2f.tasks.schema import COLUMNS, Task

log = logging.getLogger(__name__)

# The settings a work folder was started under (see claim_work_dir).
RESUME_KEY = "resume_key.txt"
# Scratch of a resumable stage's output lives beside it, outside the folder DVC deletes before
# it reruns a stage: ``data/episodes/train`` -> ``data/episodes/train.partial``.
PARTIAL_SUFFIX = ".partial"


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; outputs are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode())


def replace_dir(staging: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """Move a fully written ``staging`` folder to ``target``, replacing what was there.

    Readers see the old folder or the new one, never a mixture; the old one is deleted only
    after the new one is in place.
    """
    staging, target = Path(staging), Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    retired = target.with_name(f".{target.name}.old")
    shutil.rmtree(retired, ignore_errors=True)
    if target.exists():
        target.rename(retired)
    staging.rename(target)
    shutil.rmtree(retired, ignore_errors=True)


def staging_dir(target: str | os.PathLike[str]) -> Path:
    """An empty folder beside ``target`` to build it in before :func:`replace_dir` (a leftover
    of a run killed while building is discarded)."""
    target = Path(target)
    staging = target.with_name(f".{target.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def partial_dir(out: str | os.PathLike[str]) -> Path:
    """Where a resumable stage keeps the finished pieces of ``out`` until it is published."""
    out = Path(out)
    return out.with_name(f"{out.name}{PARTIAL_SUFFIX}")


def settings_key(settings: object) -> str:
    """A digest of JSON-serialisable ``settings``: equal keys, equal settings."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def claim_work_dir(work_dir: str | os.PathLike[str], settings: object) -> Path:
    """Keep ``work_dir`` (checkpoints, finished shards) only if it was started under the same
    ``settings``; otherwise empty it. Then record the settings.

    ``settings`` is whatever decides the result (params, input data, model identity): a rerun
    after a crash continues, a rerun with other settings starts over instead of silently mixing
    two runs' work.
    """
    work_dir = Path(work_dir)
    key = settings_key(settings)
    marker = work_dir / RESUME_KEY
    recorded = marker.read_text().strip() if marker.is_file() else None
    if work_dir.exists() and recorded != key:
        log.warning("discarding %s: written with other settings", work_dir)
        shutil.rmtree(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    if recorded != key:
        atomic_write_text(marker, key + "\n")
    return work_dir


def folder_identity(source: str | os.PathLike[str]) -> dict[str, object]:
    """What tells one model folder from another without hashing gigabytes: each file's name,
    size and modification time (publishing a model writes new files), or a hub id as given.
    A false difference only costs a recomputation; a false match would reuse stale work."""
    path = Path(source)
    if not path.is_dir():
        return {"hub_id": str(source)}
    return {
        str(p.relative_to(path)): [p.stat().st_size, p.stat().st_mtime_ns]
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


def tasks_frame(tasks: Iterable[Task]) -> pd.DataFrame:
    return pd.DataFrame([t.to_row() for t in tasks], columns=list(COLUMNS))


def write_tasks(path: str | os.PathLike[str], tasks: Iterable[Task]) -> None:
    frame = tasks_frame(tasks)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        frame.to_parquet(tmp, index=False)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_task_frame(path: str | os.PathLike[str]) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: task file not found (run `rl2f prepare` first)")
    if not path.is_file():  # pandas would read a directory as a partitioned dataset
        raise DataError(f"{path}: not a regular file")
    try:
        table = pq.read_table(path)
        # Strings are decoded lazily: without a full check, bytes that are not UTF-8 surface as
        # a UnicodeDecodeError wherever a cell is first read, far from the file's name.
        table.validate(full=True)
        frame = table.to_pandas()
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        raise DataError(f"{path}: not a readable Parquet file ({one_line(exc)})") from None
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}")
    return frame


# Columns every task must have as text; solution may be missing, the JSON columns are objects.
TEXT_COLUMNS = ("id", "domain", "source", "split", "prompt", "answer", "verifier")
JSON_COLUMNS = ("verifier_config", "metadata")


def checked_task_row(row: dict, where: str) -> dict:
    """``row`` with its JSON cells parsed, after catching a wrongly typed cell that
    ``Task.from_row`` would turn into the text ``None`` or a list where the rest of the
    pipeline expects a mapping."""
    for column in TEXT_COLUMNS:
        value = row[column]
        if not isinstance(value, str) or not value:
            raise DataError(
                f"{where}: column {column!r} must be non-empty text (got {value!r:.40})"
            )
    parsed = dict(row)
    for column in JSON_COLUMNS:
        value = row[column]
        if value is None or isinstance(value, dict):
            continue
        if not isinstance(value, str):  # e.g. a list column, read back as an array
            raise DataError(f"{where}: column {column!r} must be a JSON object")
        parsed[column] = parse_json_object(value, f"{where}: column {column!r}") if value else {}
    return parsed


def read_tasks(path: str | os.PathLike[str]) -> list[Task]:
    frame = read_task_frame(path)
    tasks = []
    for index, row in enumerate(frame.to_dict(orient="records")):
        checked = checked_task_row(row, f"{path}: row {index}")
        try:
            tasks.append(Task.from_row(checked))
        except (KeyError, ValueError, TypeError) as exc:
            raise DataError(f"{path}: row {index}: {one_line(exc)}") from None
    return tasks
