"""``rl2f validate``: check the task files before anything trains on them.

Writes ``<validation_dir>/validation.json`` (machine-readable) and
``validation.html`` (a self-contained table for people; GX's own Data Docs need a file-backed
context, and the report must open offline). Both are written before a failure is raised, so a
red pipeline always leaves the evidence behind.
"""

from __future__ import annotations

import html
import json
import logging
from pathlib import Path
from typing import Any

from rl2f.config import Config
from rl2f.errors import DataError
from rl2f.tasks.io import atomic_write_text
from rl2f.validation import ExpectationOutcome, ValidationReport, validate_task_files

log = logging.getLogger(__name__)

JSON_NAME = "validation.json"
HTML_NAME = "validation.html"

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #1f2328; }
h1 { font-size: 1.4rem; }
.status { font-weight: 600; padding: 0.1rem 0.5rem; border-radius: 4px; }
.pass { background: #dafbe1; color: #116329; }
.fail { background: #ffebe9; color: #a40e26; }
table { border-collapse: collapse; width: 100%; font-size: 0.9rem; }
th, td { border: 1px solid #d0d7de; padding: 0.35rem 0.6rem; text-align: left;
         vertical-align: top; }
th { background: #f6f8fa; }
code { font-size: 0.85rem; word-break: break-all; }
"""


def _cell(value: Any) -> str:
    if value is None or value == [] or value == {}:
        return ""
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return f"<code>{html.escape(text)}</code>"


def _row(outcome: ExpectationOutcome) -> str:
    status = "pass" if outcome.success else "fail"
    if outcome.unexpected_count is not None:
        unexpected = f"{outcome.unexpected_count} of {outcome.element_count}"
    else:
        unexpected = ""
    observed = outcome.error or outcome.observed_value or outcome.unexpected_values
    examples = "<br>".join(
        f"<code>{html.escape(ref)}</code>"
        + (f": {html.escape(outcome.notes[ref])}" if ref in outcome.notes else "")
        for ref in outcome.example_ids
    )
    cells = [
        f"<strong>{html.escape(outcome.name)}</strong><br>{html.escape(outcome.description)}",
        _cell(outcome.expectation),
        _cell(outcome.column),
        f'<span class="status {status}">{status.upper()}</span>',
        html.escape(unexpected),
        _cell(observed),
        examples,
    ]
    return f'<tr class="{status}-row">' + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"


def render_html(report: ValidationReport) -> str:
    """A small self-contained page: inline CSS, no scripts, nothing fetched."""
    status = "pass" if report.success else "fail"
    files = ", ".join(f"{html.escape(name)}: {rows}" for name, rows in report.files.items())
    header = "".join(
        f"<th>{h}</th>"
        for h in (
            "Expectation",
            "GX type",
            "Column",
            "Result",
            "Unexpected",
            "Observed",
            "Examples",
        )
    )
    rows = "\n".join(_row(outcome) for outcome in report.expectations)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Task data validation</title>
<style>{_STYLE}</style>
</head>
<body>
<h1>Task data validation <span class="status {status}">{status.upper()}</span></h1>
<p>{html.escape(report.summary_line())}</p>
<p>{report.rows} tasks ({files}); {len(report.expectations)} expectations in
{report.elapsed_s:.2f} s.</p>
<table>
<thead><tr>{header}</tr></thead>
<tbody>
{rows}
</tbody>
</table>
</body>
</html>
"""


def write_reports(report: ValidationReport, out_dir: str | Path) -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    json_path, html_path = out_dir / JSON_NAME, out_dir / HTML_NAME
    atomic_write_text(json_path, json.dumps(report.to_dict(), indent=2) + "\n")
    atomic_write_text(html_path, render_html(report))
    return json_path, html_path


def summary(report: ValidationReport) -> dict[str, Any]:
    """What the stage returns and MLflow logs: counts as metrics; the full report is an artifact."""
    return {
        "success": report.success,
        "rows": report.rows,
        "rows_by_file": dict(report.files),
        "expectations": len(report.expectations),
        "failed_expectations": len(report.failed),
        "failed": [outcome.name for outcome in report.failed],
        "elapsed_s": round(report.elapsed_s, 3),
    }


def _active_mlflow_run(cfg: Config) -> Any:
    """The stage's MLflow run if one is open; with tracking off MLflow is not even imported."""
    if not cfg.tracking.enabled:
        return None
    from rl2f.tracking import active

    return active()


def run(cfg: Config) -> dict[str, Any]:
    """Validate the task files; raise :class:`DataError` (one line) when any expectation fails.

    The reports are written, and attached to the stage's MLflow run when tracking is on,
    before the error is raised, so a failed run still shows what failed.
    """
    report = validate_task_files(cfg.data.out_dir)
    json_path, html_path = write_reports(report, cfg.data.validation_dir)
    mlflow = _active_mlflow_run(cfg)
    if mlflow is not None:
        mlflow.log_artifact(str(json_path), "validation")
        mlflow.log_artifact(str(html_path), "validation")
    if not report.success:
        raise DataError(f"{cfg.data.out_dir}: {report.summary_line()} (details: {json_path})")
    log.info("validated %d tasks: %s", report.rows, report.summary_line())
    return summary(report)
