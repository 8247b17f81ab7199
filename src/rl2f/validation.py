"""Data contract of the task files, checked with Great Expectations.

All three split files are validated together as one pandas batch (the file name kept in a
column) because the most costly mistakes live between files: an id reused across splits, or an
evaluation prompt that also sits in the training set. Checks that GX cannot express directly
(does the ground truth pass its own verifier? does the prompt leak the answer? how many splits
share a prompt?) become derived columns, and GX expectations check those columns, so every
failure is reported the same way: which expectation, how many rows, which task ids.

Great Expectations takes seconds to import, so it is imported inside :func:`run_expectations`
only; importing this module stays cheap.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from rl2f.tasks.io import read_task_frame
from rl2f.tasks.schema import COLUMNS, DOMAINS, SPLITS, Task, content_id, normalize_prompt

if TYPE_CHECKING:
    from rl2f.tasks.verifiers.base import Verdict

MAX_EXAMPLES = 5
DEFAULT_WORKERS = min(16, (os.cpu_count() or 1) + 4)

# Derived columns added next to the task columns; the column-set expectation allows exactly these.
FILE = "file"  # the Parquet file the row came from
FILE_SPLIT = "file_split"  # the split that file holds (its stem)
ROW_REF = "row_ref"  # the task id, or "<file>:<row>" where the id is unusable
EXPECTED_ID = "expected_id"
SPLITS_SHARING_PROMPT = "splits_sharing_prompt"
ANSWER_VERIFIES = "answer_verifies"
ANSWER_LEAKS = "answer_leaks"
DERIVED_COLUMNS = (
    FILE,
    FILE_SPLIT,
    ROW_REF,
    EXPECTED_ID,
    SPLITS_SHARING_PROMPT,
    ANSWER_VERIFIES,
    ANSWER_LEAKS,
)
REQUIRED_COLUMNS = tuple(c for c in COLUMNS if c != "solution")  # solution is optional
NON_EMPTY_COLUMNS = ("source", "prompt", "answer", "verifier")
JSON_COLUMNS = ("verifier_config", "metadata")


# ---------------------------------------------------------------- answer leaks
MIN_LEAK_CHARS = 2
_ANSWER_CUE = r"\b(?:answer|solution)(?:\s+is\b\s*[:=]?|\s*[:=])\s*"


def _collapse(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().casefold()


def _significant_lines(text: str) -> list[str]:
    return [line for line in map(_collapse, text.splitlines()) if line]


def _contains_block(lines: Sequence[str], block: Sequence[str]) -> bool:
    width = len(block)
    if width == 0 or sum(map(len, block)) < MIN_LEAK_CHARS:
        return False
    return any(list(lines[i : i + width]) == list(block) for i in range(len(lines) - width + 1))


def answer_leaks(prompt: str, answer: str, solution: str | None = None) -> bool:
    """Does the prompt give away the privileged answer (or worked solution)?

    The rule, comparing case-insensitively with runs of whitespace collapsed and blank lines
    ignored:

    1. Cue: the answer follows "answer" or "solution" and then "is", ":" or "=" ("The answer
       is 7", "Solution: 7"), whatever its length.
    2. Whole lines: the answer, or the solution, fills whole lines of the prompt, and is at
       least ``MIN_LEAK_CHARS`` characters long. A multi-line secret must match consecutive
       lines: a solved grid, or for code the canonical body (``solution``) or the complete
       program (``answer`` = signature + body); the signature alone is public, only the body
       following it is a leak.

    Deliberately NOT a leak: the answer occurring inside a line. Problems legitimately contain
    their answer's text: operands ("Calculate -( -( 0 + -3 ) )" -> "-3"), options that the
    instructions offer ('write "infeasible"'), the move words of a maze ("left"), a format
    example ("e.g. right right down"). A substring rule would reject real generated data.
    """
    target = _collapse(answer)
    if target:
        secret = r"\s+".join(re.escape(word) for word in target.split(" "))
        if re.search(_ANSWER_CUE + secret + r"(?!\w)", _collapse(prompt)):
            return True
    prompt_lines = _significant_lines(prompt)
    return any(
        _contains_block(prompt_lines, _significant_lines(secret_text))
        for secret_text in (answer, solution)
        if secret_text
    )


# ---------------------------------------------------------------- derived columns
def _is_text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _map_rows(frame: pd.DataFrame, fn: Callable[[dict[str, Any]], Any]) -> pd.Series:
    """Row-wise values kept as Python objects, so None stays None for GX's null handling."""
    rows = frame.to_dict(orient="records")
    return pd.Series([fn(row) for row in rows], index=frame.index, dtype=object)


def _row_refs(frame: pd.DataFrame) -> pd.Series:
    """The id where usable, else "<file>:row <n>", so every failure points at a row."""
    row_numbers = frame.groupby(FILE).cumcount()
    return pd.Series(
        [
            task_id if _is_text(task_id) else f"{file}:row {number}"
            for task_id, file, number in zip(frame["id"], frame[FILE], row_numbers, strict=True)
        ],
        index=frame.index,
        dtype=object,
    )


def _expected_id(row: dict[str, Any]) -> str | None:
    if all(_is_text(row[c]) for c in ("domain", "prompt", "answer")):
        return content_id(row["domain"], row["prompt"], row["answer"])
    return None


def _leaks(row: dict[str, Any]) -> bool | None:
    if not (_is_text(row["prompt"]) and _is_text(row["answer"])):
        return None  # reported by the non-null / non-empty expectations
    solution = row["solution"] if isinstance(row["solution"], str) else None
    return answer_leaks(row["prompt"], row["answer"], solution)


def _splits_sharing_prompt(frame: pd.DataFrame) -> pd.Series:
    """For each row, in how many splits its normalised prompt occurs (1 = disjoint)."""
    prompts = frame["prompt"].map(lambda p: normalize_prompt(p) if isinstance(p, str) else None)
    counts = frame[FILE_SPLIT].groupby(prompts, dropna=True).nunique()
    return prompts.map(counts).astype("Int64")


@dataclass(frozen=True)
class SelfCheck:
    """The outcome of verifying a task's own ground truth; ``ok`` is None when the row is too
    malformed to build a Task (other expectations report why)."""

    ok: bool | None
    reason: str = ""


def _verify_own_answer(verify: Callable[[Task, str], Verdict], row: dict[str, Any]) -> SelfCheck:
    if not all(_is_text(row.get(c)) for c in ("prompt", "answer", "verifier")):
        return SelfCheck(None)
    try:
        task = Task.from_row(row)
    except (KeyError, ValueError, TypeError):
        return SelfCheck(None)
    if not isinstance(task.verifier_config, dict):
        return SelfCheck(None)  # reported by verifier_config_is_object
    try:
        verdict = verify(task, task.answer)
    except Exception as exc:  # a verifier that crashes on the ground truth is a data failure
        return SelfCheck(False, f"{task.verifier} verifier raised {type(exc).__name__}: {exc}")
    if verdict.correct:
        return SelfCheck(True)
    return SelfCheck(
        False,
        f"{task.verifier} verifier rejected it: {json.dumps(verdict.diagnostics, default=str)}",
    )


def verify_answers(frame: pd.DataFrame, workers: int = DEFAULT_WORKERS) -> list[SelfCheck]:
    """Run every task's verifier on its own answer. Threads, because the slow verifier (code)
    waits on a sandbox subprocess; the bar only draws on a terminal."""
    from tqdm.contrib.concurrent import thread_map

    from rl2f.tasks.verifiers import verify  # registers every verifier, once, before the threads

    rows = frame[list(COLUMNS)].to_dict(orient="records")
    return thread_map(
        functools.partial(_verify_own_answer, verify),
        rows,
        max_workers=max(1, workers),
        chunksize=1,
        desc="verify answers",
        unit="task",
        disable=None,
        leave=False,
    )


def load_task_files(data_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """The three split files as one frame, each row remembering its file."""
    frames = []
    for split in SPLITS:
        path = Path(data_dir) / f"{split}.parquet"
        frame = read_task_frame(path)
        frames.append(frame.assign(**{FILE: path.name, FILE_SPLIT: split}))
    return pd.concat(frames, ignore_index=True)


def add_derived_columns(
    frame: pd.DataFrame, workers: int = DEFAULT_WORKERS
) -> tuple[pd.DataFrame, dict[str, str]]:
    """Adds the derived columns; also returns why each failing self-check failed, by row ref."""
    frame = frame.copy()
    frame[ROW_REF] = _row_refs(frame)
    frame[EXPECTED_ID] = _map_rows(frame, _expected_id)
    frame[SPLITS_SHARING_PROMPT] = _splits_sharing_prompt(frame)
    checks = verify_answers(frame, workers)
    frame[ANSWER_VERIFIES] = pd.Series([c.ok for c in checks], index=frame.index, dtype=object)
    frame[ANSWER_LEAKS] = _map_rows(frame, _leaks)
    reasons = {ref: c.reason for ref, c in zip(frame[ROW_REF], checks, strict=True) if c.reason}
    return frame, reasons


# ---------------------------------------------------------------- expectations
@dataclass
class ExpectationOutcome:
    """One expectation's result in the shape the reports use (JSON-safe values only)."""

    name: str
    expectation: str
    column: str | None
    description: str
    success: bool
    element_count: int | None = None
    unexpected_count: int | None = None
    unexpected_percent: float | None = None
    observed_value: Any = None
    unexpected_values: list[Any] = field(default_factory=list)
    example_ids: list[str] = field(default_factory=list)
    notes: dict[str, str] = field(default_factory=dict)
    error: str | None = None

    def summary(self) -> str:
        """A short clause for the one-line error: what failed and where to look."""
        if self.error:
            return f"{self.name} (error: {_one_line(self.error)})"
        if self.unexpected_count is not None:
            ids = ", ".join(self.example_ids)
            return f"{self.name} ({self.unexpected_count} row(s), e.g. {ids})"
        return f"{self.name} (observed {_one_line(str(self.observed_value))})"


# A missing value is the not-null expectations' finding; do not report it a second time.
_EITHER_MISSING = "either_value_is_missing"


def _suite_entries() -> list[tuple[str, str, Any]]:
    """(name, description, GX expectation) in report order."""
    import great_expectations.expectations as gxe

    entries: list[tuple[str, str, Any]] = [
        (
            "has_tasks",
            "the three files hold at least one task between them",
            gxe.ExpectTableRowCountToBeBetween(min_value=1),
        ),
        (
            "columns_match_schema",
            "the files hold exactly the task schema's columns",
            gxe.ExpectTableColumnsToMatchSet(
                column_set=[*COLUMNS, *DERIVED_COLUMNS], exact_match=True
            ),
        ),
    ]
    for column in COLUMNS:
        entries.append(
            (
                f"{column}_is_string",
                f"{column} holds strings",
                gxe.ExpectColumnValuesToBeOfType(column=column, type_="str"),
            )
        )
    for column in REQUIRED_COLUMNS:
        entries.append(
            (
                f"{column}_not_null",
                f"every task has a {column}",
                gxe.ExpectColumnValuesToNotBeNull(column=column),
            )
        )
    for column in NON_EMPTY_COLUMNS:
        entries.append(
            (
                f"{column}_not_empty",
                f"{column} is not empty or whitespace",
                gxe.ExpectColumnValuesToNotMatchRegex(column=column, regex=r"^\s*$"),
            )
        )
    entries += [
        (
            "ids_unique",
            "task ids are unique across all three files",
            gxe.ExpectColumnValuesToBeUnique(column="id"),
        ),
        (
            "id_matches_content_hash",
            "id is the content hash of domain, normalised prompt and answer",
            gxe.ExpectColumnPairValuesToBeEqual(
                column_A="id", column_B=EXPECTED_ID, ignore_row_if=_EITHER_MISSING
            ),
        ),
        (
            "domain_known",
            f"domain is one of {', '.join(DOMAINS)}",
            gxe.ExpectColumnValuesToBeInSet(column="domain", value_set=list(DOMAINS)),
        ),
        (
            "split_matches_file",
            "split column equals the split of the file the row is in",
            gxe.ExpectColumnPairValuesToBeEqual(
                column_A="split", column_B=FILE_SPLIT, ignore_row_if=_EITHER_MISSING
            ),
        ),
        (
            "splits_disjoint",
            "no normalised prompt occurs in more than one split",
            gxe.ExpectColumnValuesToBeBetween(
                column=SPLITS_SHARING_PROMPT, min_value=1, max_value=1
            ),
        ),
        (
            "answer_passes_verifier",
            "the ground-truth answer passes the task's own verifier",
            gxe.ExpectColumnValuesToBeInSet(column=ANSWER_VERIFIES, value_set=[True]),
        ),
        (
            "answer_not_in_prompt",
            "the prompt does not give the answer away (cue or whole lines; code: the body)",
            gxe.ExpectColumnValuesToBeInSet(column=ANSWER_LEAKS, value_set=[False]),
        ),
    ]
    for column in JSON_COLUMNS:
        entries.append(
            (
                f"{column}_is_json",
                f"{column} is valid JSON",
                gxe.ExpectColumnValuesToBeJsonParseable(column=column),
            )
        )
        entries.append(
            (
                f"{column}_is_object",
                f"{column} is a JSON object, not a list or scalar",
                gxe.ExpectColumnValuesToMatchRegex(column=column, regex=r"^\s*\{[\s\S]*\}\s*$"),
            )
        )
    return entries


def _jsonable(value: Any) -> Any:
    """GX results hold numpy scalars and NaN; reports need plain JSON."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if value is pd.NA or value is pd.NaT:
        return None
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return _jsonable(value.tolist())
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_jsonable(v) for v in value]
    return str(value)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _outcome(name: str, description: str, result: Any) -> ExpectationOutcome:
    config = result.expectation_config
    details = result.result or {}
    exception = result.exception_info or {}
    if exception.get("raised_exception"):
        error = exception.get("exception_message") or "expectation raised an exception"
    else:
        error = None
    refs = [entry.get(ROW_REF) for entry in details.get("unexpected_index_list") or []]
    example_ids = list(dict.fromkeys(str(r) for r in refs if r is not None))[:MAX_EXAMPLES]
    observed = details.get("observed_value")
    if config.type == "expect_table_columns_to_match_set" and isinstance(observed, list):
        observed = [c for c in observed if c not in DERIVED_COLUMNS]  # show the files' own
    if details.get("details"):
        observed = {"observed": observed, "details": details["details"]}
    return ExpectationOutcome(
        name=name,
        expectation=config.type,
        column=config.kwargs.get("column") or config.kwargs.get("column_A"),
        description=description,
        success=bool(result.success) and error is None,
        element_count=details.get("element_count"),
        unexpected_count=details.get("unexpected_count"),
        unexpected_percent=_jsonable(details.get("unexpected_percent")),
        observed_value=_jsonable(observed),
        unexpected_values=_jsonable(list(details.get("partial_unexpected_list") or []))[
            :MAX_EXAMPLES
        ],
        example_ids=example_ids,
        error=error,
    )


def _quiet_gx_logging() -> None:
    """GX logs its internals at INFO ("Skipping registering function ..."): noise on a CLI that
    logs at INFO, where a failed validation should print one line. Warnings still show."""
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    for name, logger in logging.root.manager.loggerDict.items():
        explicit_level = getattr(logger, "level", logging.NOTSET)  # placeholders have none
        if name.startswith("great_expectations.") and 0 < explicit_level < logging.WARNING:
            logger.setLevel(logging.WARNING)


def run_expectations(frame: pd.DataFrame) -> list[ExpectationOutcome]:
    """One ephemeral context, one whole-dataframe batch, one suite, one validation definition."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    _quiet_gx_logging()
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    _quiet_gx_logging()  # again: some GX modules set their own logger to INFO when imported
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch = (
        context.data_sources.add_pandas("tasks")
        .add_dataframe_asset("task_files")
        .add_batch_definition_whole_dataframe("all_splits")
    )
    entries = _suite_entries()
    for name, _, expectation in entries:
        expectation.meta = {"name": name}
    # Handing the suite its expectations up front stores it once, not once per expectation.
    suite = context.suites.add(
        gx.ExpectationSuite(name="task_files", expectations=[e for _, _, e in entries])
    )
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name="task_files", data=batch, suite=suite)
    )
    results = definition.run(
        batch_parameters={"dataframe": frame},
        result_format={"result_format": "COMPLETE", "unexpected_index_column_names": [ROW_REF]},
    )
    by_name = {r.expectation_config.meta["name"]: r for r in results.results}
    return [_outcome(name, description, by_name[name]) for name, description, _ in entries]


# ---------------------------------------------------------------- the whole check
@dataclass
class ValidationReport:
    success: bool
    rows: int
    files: dict[str, int]  # file name -> rows
    elapsed_s: float
    expectations: list[ExpectationOutcome]

    @property
    def failed(self) -> list[ExpectationOutcome]:
        return [e for e in self.expectations if not e.success]

    def to_dict(self) -> dict[str, Any]:
        return {
            "success": self.success,
            "rows": self.rows,
            "files": self.files,
            "elapsed_s": round(self.elapsed_s, 3),
            "evaluated": len(self.expectations),
            "failed": [e.name for e in self.failed],
            "expectations": [asdict(e) for e in self.expectations],
        }

    def summary_line(self) -> str:
        """One line naming every failed expectation with example ids."""
        if self.success:
            return f"all {len(self.expectations)} expectations passed on {self.rows} tasks"
        clauses = "; ".join(e.summary() for e in self.failed)
        return f"{len(self.failed)} of {len(self.expectations)} expectations failed: {clauses}"


def validate_frame(frame: pd.DataFrame, workers: int = DEFAULT_WORKERS) -> ValidationReport:
    """Validate an already concatenated frame (task columns plus ``file`` and ``file_split``)."""
    started = time.perf_counter()
    derived, reasons = add_derived_columns(frame, workers)
    outcomes = run_expectations(derived)
    for outcome in outcomes:
        if outcome.name == "answer_passes_verifier":
            outcome.notes = {ref: reasons[ref] for ref in outcome.example_ids if ref in reasons}
    files = {str(k): int(v) for k, v in derived[FILE].value_counts(sort=False).items()}
    return ValidationReport(
        success=all(o.success for o in outcomes),
        rows=len(derived),
        files=files,
        elapsed_s=time.perf_counter() - started,
        expectations=outcomes,
    )


def validate_task_files(
    data_dir: str | os.PathLike[str], workers: int = DEFAULT_WORKERS
) -> ValidationReport:
    """Validate ``<data_dir>/{train,eval_id,eval_ood}.parquet`` together."""
    frame = load_task_files(data_dir)
    report = validate_frame(frame, workers)
    for split in SPLITS:
        report.files.setdefault(f"{split}.parquet", 0)
    return report
