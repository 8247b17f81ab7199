"""Tasks from a local JSONL, CSV or Parquet file, with a column mapping.

``columns`` maps our field names to the file's column names (``{prompt: problem}``); a field
that is not mapped is looked up under its own name. The record-to-Task conversion here is
shared with the Hugging Face source, which yields the same kind of rows.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Collection, Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
from pyarrow import ArrowException

from rl2f.config import SourceConfig
from rl2f.errors import DataError, UserError, decode_utf8, one_line, parse_json_object
from rl2f.tasks.schema import DOMAINS, Task
from rl2f.tasks.sources import subset_indices

logger = logging.getLogger(__name__)

FIELDS = (
    "prompt",
    "answer",
    "solution",
    "id",
    "domain",
    "verifier",
    "verifier_config",
    "metadata",
)
REQUIRED_FIELDS = ("prompt", "answer")
DEFAULT_DOMAIN = "math"
DEFAULT_VERIFIER = "math"

Row = tuple[int, Mapping[str, Any]]  # (1-based row number as the user sees it, record)


def resolve_columns(columns: Mapping[str, str], where: str) -> dict[str, str]:
    unknown = sorted(set(columns) - set(FIELDS))
    if unknown:
        raise UserError(
            f"{where}: columns maps unknown field {unknown[0]!r} (fields: {', '.join(FIELDS)})"
        )
    return {field: columns.get(field, field) for field in FIELDS}


def check_mapped_columns(
    columns: Mapping[str, str], mapping: Mapping[str, str], available: Collection[str], where: str
) -> None:
    """Fail on a mapped column the table lacks before reading any row: a typo in ``columns``
    should name the column, not surface as an empty field on row 1."""
    wanted = [(f, mapping[f]) for f in FIELDS if f in columns or f in REQUIRED_FIELDS]
    for field, column in wanted:
        if column not in available:
            raise DataError(
                f"{where}: no column {column!r} for field {field!r} "
                f"(columns: {', '.join(map(str, available))})"
            )


def cell_text(value: Any) -> str | None:
    """A cell as text, or None when it is missing (None, NaN of any float type, pandas NA) or
    blank."""
    if value is None or (pd.api.types.is_scalar(value) and pd.isna(value)):
        return None
    text = str(value).strip()
    return text or None


def cell_value(value: Any, where: str, row: int, field: str) -> Any:
    """Undo what a file format does to text: binary columns hold bytes, which must be UTF-8
    (``str(b"x")`` would quietly become the text ``b'x'``)."""
    if isinstance(value, bytes | bytearray):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(
                f"{where}: row {row}: field {field!r} is not UTF-8 text "
                f"(byte 0x{value[exc.start]:02x} at offset {exc.start})"
            ) from None
    return value


def check_unicode(text: str, where: str, row: int, field: str) -> str:
    """Reject lone surrogates (JSON allows ``"\\ud800"``): they cannot be hashed into an id
    or written to Parquet, and would fail far from the row that holds them."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise DataError(
            f"{where}: row {row}: field {field!r} is not valid Unicode "
            f"(unpaired surrogate at character {exc.start})"
        ) from None
    return text


def cell_object(value: Any, where: str, row: int, field: str) -> dict[str, Any]:
    """A JSON object cell: a mapping as is, or a string holding a JSON object."""
    if isinstance(value, Mapping):
        return dict(value)
    value = cell_value(value, where, row, field)
    if value is not None and not isinstance(value, str) and not pd.api.types.is_scalar(value):
        # A list or array cell: describe it, not the JSON error of its string form.
        raise DataError(f"{where}: row {row}: field {field!r} must be a JSON object")
    text = cell_text(value)
    if text is None:
        return {}
    return parse_json_object(text, f"{where}: row {row}: field {field!r}")


def record_to_task(
    row_number: int,
    record: Mapping[str, Any],
    source: SourceConfig,
    mapping: Mapping[str, str],
    where: str,
    label: str,
) -> Task:
    def text(field: str) -> str | None:
        value = cell_value(record.get(mapping[field]), where, row_number, field)
        if isinstance(value, Mapping | list | tuple | set) or not pd.api.types.is_scalar(value):
            # A nested value would silently become its Python repr as the prompt or answer.
            kind = type(value).__name__
            raise DataError(f"{where}: row {row_number}: field {field!r} must be text (got {kind})")
        found = cell_text(value)
        return None if found is None else check_unicode(found, where, row_number, field)

    def json_object(field: str) -> dict[str, Any]:
        return cell_object(record.get(mapping[field]), where, row_number, field)

    for field in REQUIRED_FIELDS:
        if text(field) is None:
            column = mapping[field]
            state = "missing" if column not in record else "empty"
            raise DataError(
                f"{where}: row {row_number}: field {field!r} (column {column!r}) is {state}"
            )
    domain = source.domain or text("domain") or DEFAULT_DOMAIN
    if domain not in DOMAINS:
        raise DataError(
            f"{where}: row {row_number}: field 'domain' is {domain!r} "
            f"(expected one of {', '.join(DOMAINS)})"
        )
    metadata = json_object("metadata")
    metadata.setdefault("row", row_number)
    return Task(
        id=text("id") or "",
        domain=domain,
        source=label,
        prompt=text("prompt") or "",
        answer=text("answer") or "",
        solution=text("solution"),
        verifier=text("verifier") or DEFAULT_VERIFIER,
        verifier_config=json_object("verifier_config"),
        metadata=metadata,
    )


def records_to_tasks(
    rows: Iterable[Row], source: SourceConfig, mapping: Mapping[str, str], where: str, label: str
) -> list[Task]:
    """Turn file-like records into Tasks, failing on the first bad row with its number."""
    return [
        record_to_task(row_number, record, source, mapping, where, label)
        for row_number, record in rows
    ]


# ---------------------------------------------------------------- readers
def read_jsonl(path: Path) -> tuple[list[Row], list[str]]:
    rows: list[Row] = []
    seen: dict[str, None] = {}
    # Bytes, decoded line by line, so a bad byte is reported with its row.
    with path.open("rb") as handle:
        for line_number, raw in enumerate(handle, start=1):
            if line_number == 1:
                raw = raw.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 BOM some editors write
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(
                    f"{path}: row {line_number}: not UTF-8 text "
                    f"(byte 0x{raw[exc.start]:02x} at column {exc.start + 1})"
                ) from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}: row {line_number}: not valid JSON ({exc.msg})") from None
            except RecursionError:
                raise DataError(f"{path}: row {line_number}: JSON nested too deeply") from None
            if not isinstance(record, dict):
                raise DataError(f"{path}: row {line_number}: expected a JSON object")
            seen.update(dict.fromkeys(record))
            rows.append((line_number, record))
    return rows, list(seen)


def frame_rows(frame: pd.DataFrame) -> tuple[list[Row], list[str]]:
    records = frame.to_dict(orient="records")
    return [(i, record) for i, record in enumerate(records, start=1)], list(frame.columns)


def read_csv(path: Path) -> tuple[list[Row], list[str]]:
    text = decode_utf8(path.read_bytes(), str(path))
    # Everything as text: an answer "007" or "1e3" must not become a number.
    frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    return frame_rows(frame)


def read_parquet(path: Path) -> tuple[list[Row], list[str]]:
    return frame_rows(pd.read_parquet(path))


READERS: dict[str, Callable[[Path], tuple[list[Row], list[str]]]] = {
    ".jsonl": read_jsonl,
    ".ndjson": read_jsonl,
    ".csv": read_csv,
    ".parquet": read_parquet,
    ".pq": read_parquet,
}


def read_rows(path: Path) -> tuple[list[Row], list[str]]:
    """All rows of the file with their row numbers, and the column names seen."""
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise UserError(
            f"{path}: unsupported file type {path.suffix or '(none)'!r} "
            f"(supported: {', '.join(READERS)})"
        )
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if not path.is_file():
        raise DataError(f"{path}: not a regular file")
    try:
        return reader(path)
    except DataError:
        raise
    # pandas/pyarrow parse errors and bad encodings; Arrow's errors for unsupported or
    # inconsistent column types (ArrowNotImplementedError, ArrowTypeError) are ArrowExceptions.
    except (OSError, ValueError, ArrowException, RecursionError) as exc:
        raise DataError(f"{path}: cannot read as {path.suffix[1:]} ({one_line(exc)})") from None


def load(source: SourceConfig) -> list[Task]:
    path = Path(source.name).expanduser()
    where = str(path)
    mapping = resolve_columns(source.columns, where)
    rows, columns = read_rows(path)
    if not rows:
        raise DataError(f"{where}: no rows")
    check_mapped_columns(source.columns, mapping, columns, where)
    tasks = records_to_tasks(rows, source, mapping, where, label=f"file:{source.name}")
    keep = subset_indices(len(tasks), source.size, source.seed)
    if len(keep) < len(tasks):
        logger.info("%s: took %d of %d rows (size=%d)", where, len(keep), len(tasks), source.size)
    return [tasks[i] for i in keep]
