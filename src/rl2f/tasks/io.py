"""Reading and writing task files. Writes are atomic (temp file + rename) so an interrupted
stage never leaves a half-written Parquet file that a later stage would trust."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from rl2f.errors import DataError, one_line
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
    if not path.is_file():  # pandas would read a directory as a partitioned dataset
        raise DataError(f"{path}: not a regular file")
    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        raise DataError(f"{path}: not a readable Parquet file ({one_line(exc)})") from None
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}")
    return frame


# Columns every task must have as text; solution may be missing, the JSON columns are objects.
TEXT_COLUMNS = ("id", "domain", "source", "split", "prompt", "answer", "verifier")
JSON_COLUMNS = ("verifier_config", "metadata")


def check_task_row(row: dict, where: str) -> None:
    """Catch a wrongly typed cell before ``Task.from_row`` turns it into the text ``None`` or
    a list where the rest of the pipeline expects a mapping."""
    for column in TEXT_COLUMNS:
        value = row[column]
        if not isinstance(value, str) or not value:
            raise DataError(
                f"{where}: column {column!r} must be non-empty text (got {value!r:.40})"
            )
    for column in JSON_COLUMNS:
        value = row[column]
        if value is None or isinstance(value, dict):
            continue
        if not isinstance(value, str):  # e.g. a list column, read back as an array
            raise DataError(f"{where}: column {column!r} must be a JSON object")
        if not value:
            continue
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: column {column!r} is not valid JSON ({exc.msg})") from None
        except RecursionError:
            raise DataError(f"{where}: column {column!r} is nested too deeply") from None
        if not isinstance(parsed, dict):
            raise DataError(f"{where}: column {column!r} must be a JSON object")


def read_tasks(path: str | os.PathLike[str]) -> list[Task]:
    frame = read_task_frame(path)
    tasks = []
    for index, row in enumerate(frame.to_dict(orient="records")):
        check_task_row(row, f"{path}: row {index}")
        try:
            tasks.append(Task.from_row(row))
        except (KeyError, ValueError, TypeError) as exc:
            raise DataError(f"{path}: row {index}: {one_line(exc)}") from None
    return tasks
