"""Reading and writing task files. Writes are atomic (temp file + rename) so an interrupted
stage never leaves a half-written Parquet file that a later stage would trust."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from rl2f.errors import DataError
from rl2f.tasks.schema import COLUMNS, Task


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
    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        raise DataError(f"{path}: not a readable Parquet file ({exc})") from None
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}")
    return frame


def read_tasks(path: str | os.PathLike[str]) -> list[Task]:
    frame = read_task_frame(path)
    tasks = []
    for index, row in enumerate(frame.to_dict(orient="records")):
        try:
            tasks.append(Task.from_row(row))
        except (KeyError, ValueError, TypeError) as exc:
            raise DataError(f"{path}: row {index}: {exc}") from None
    return tasks
