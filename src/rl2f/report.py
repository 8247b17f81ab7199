"""The evaluation report: one self-contained HTML page and its Markdown twin.

The HTML page has no scripts and no external resources: figures are inline SVG and the style
is inline, so it opens the same from a laptop, a DVC workspace, an MLflow artifact or a
Kubeflow HTML output, with no network. The Markdown report carries the same tables and
conversations, with the figures as PNG files beside it (``figures/``).

Sections follow how people read a result: the paper-style results table, paired differences
between models (is the gap real?), accuracy curves, plasticity, sycophancy, leaks, then example
conversations.

This module computes what the report shows, once, as plain data (:class:`ReportData`); the
Jinja2 templates in ``rl2f/templates`` lay it out: ``report.html.j2`` and ``report.md.j2``, with
the headings and leads both share in ``sections.j2``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from rl2f.episodes import Episode, Turn
from rl2f.evaluation.comparisons import excludes_zero
from rl2f.evaluation.episode_files import StoredCell
from rl2f.evaluation.examples import Example, Examples, choose_examples, repeated_attempts
from rl2f.evaluation.figures import (
    accuracy_figure,
    modes_of,
    plasticity_figure,
    splits_of,
    sycophancy_figure,
    to_png,
    to_svg,
)
from rl2f.evaluation.probe import PROBE_TEACHER
from rl2f.leakage import CHECKS
from rl2f.tasks.io import atomic_write_bytes, atomic_write_text

Metrics = dict[str, Any]
Column = tuple[str, str]  # (split, mode)
Comparison = dict[str, Any]  # one row of comparisons.json
Attacks = dict[str, Any]  # the red_team stage's output: split -> mode -> leak rates

TITLE = "RL2F evaluation report"
FIGURES_DIR = "figures"
MAX_TEXT_CHARS = 1500  # longer utterances (code, long prompts) are cut in the conversations
FEEDBACK_LABELS = {
    "teacher": "Teacher",
    "llm": "LLM teacher",
    "self": "Self-critique",
    "retry": "Retry message",
}
LEAK_CHECKS = CHECKS  # the guard's own check names, so a new check shows up here too


@dataclass(frozen=True)
class Figures:
    """Each figure as inline SVG (HTML) and PNG (Markdown), keyed by file stem."""

    # matplotlib writes the SVG and escapes the labels in it, so it is inlined as markup
    svg: dict[str, Markup] = field(default_factory=dict)
    png: dict[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True)
class Report:
    html: str
    markdown: str
    figures: dict[str, bytes]  # PNG file name -> bytes, written under figures/
    fix_example: bool  # an episode where RL2F fixed what the base model repeated was found


# ---------------------------------------------------------------- numbers and tables
def fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def columns_of(metrics: Metrics) -> list[Column]:
    return [
        (split, mode)
        for split in splits_of(metrics)
        for mode in modes_of(metrics)
        if any(mode in metrics[model].get(split, {}) for model in metrics)
    ]


def cell_of(metrics: Metrics, model: str, column: Column) -> dict[str, Any] | None:
    split, mode = column
    return metrics[model].get(split, {}).get(mode)


def best_models(metrics: Metrics, column: Column, key: str) -> set[str]:
    """Models with the highest ``key`` in the column (ties all count as best), none when every
    model scores the same: then no model is better."""
    values = {
        model: cell[key]
        for model in metrics
        if (cell := cell_of(metrics, model, column)) is not None and cell[key] is not None
    }
    if not values:
        return set()
    top = max(values.values())
    best = {model for model, value in values.items() if abs(value - top) < 1e-12}
    return best if len(best) < len(values) or len(values) == 1 else set()


@dataclass(frozen=True)
class AccuracyEntry:
    value: float
    low: float
    high: float
    best: bool


@dataclass(frozen=True)
class AccuracyColumn:
    split: str
    mode: str
    turns: int  # the turn budget T of the column

    @property
    def label(self) -> str:
        return f"{self.split} · {self.mode} (T={self.turns})"


@dataclass(frozen=True)
class AccuracyRow:
    model: str
    entries: list[AccuracyEntry | None]  # one per column; None: the model has no such cell


@dataclass(frozen=True)
class AccuracyTable:
    columns: list[AccuracyColumn]
    rows: list[AccuracyRow]

    @property
    def spans(self) -> list[tuple[str, int]]:
        """Each split with its number of columns (the HTML header groups them)."""
        counts: dict[str, int] = {}
        for column in self.columns:
            counts[column.split] = counts.get(column.split, 0) + 1
        return list(counts.items())


def accuracy_table(metrics: Metrics, turn: str) -> AccuracyTable:
    """Accuracy at the ``"first"`` or ``"last"`` turn, one row per model."""
    key, index = ("turn1_acc", 0) if turn == "first" else ("final_acc", -1)
    columns = columns_of(metrics)
    best = {column: best_models(metrics, column, key) for column in columns}
    rows = []
    for model in metrics:
        entries: list[AccuracyEntry | None] = []
        for column in columns:
            cell = cell_of(metrics, model, column)
            if cell is None:
                entries.append(None)
                continue
            low, high = cell["ci95_by_turn"][index]
            entries.append(AccuracyEntry(cell[key], low, high, model in best[column]))
        rows.append(AccuracyRow(model, entries))
    labels = [AccuracyColumn(*column, turns_label(metrics, column)) for column in columns]
    return AccuracyTable(labels, rows)


@dataclass(frozen=True)
class DifferenceEntry:
    diff: float
    low: float
    high: float
    resolved: bool  # the 95% interval excludes 0


@dataclass(frozen=True)
class DifferenceRow:
    a: str  # "model · mode"
    b: str
    n: int
    entries: list[DifferenceEntry]  # one per shown turn


@dataclass(frozen=True)
class DifferenceTable:
    split: str
    turns: list[int]  # turn 1 and the last turn
    rows: list[DifferenceRow]


def side_label(side: Mapping[str, str]) -> str:
    return f"{side['model']} · {side['mode']}"


def difference_tables(comparisons: Sequence[Comparison]) -> list[DifferenceTable]:
    """One table per split: each pair (a, b) at turn 1 and at the split's last turn, in the
    order of ``comparisons``."""
    by_split: dict[str, dict[tuple[str, str], dict[int, Comparison]]] = {}
    for row in comparisons:
        pair = (side_label(row["a"]), side_label(row["b"]))
        by_split.setdefault(row["split"], {}).setdefault(pair, {})[row["turn"]] = row
    tables = []
    for split, pairs in by_split.items():
        last = max(turn for turns in pairs.values() for turn in turns)
        shown = sorted({1, last})
        rows = []
        for (a, b), turns in pairs.items():
            entries = [
                DifferenceEntry(row["diff"], *row["ci95"], excludes_zero(row["ci95"]))
                for turn in shown
                if (row := turns.get(turn)) is not None
            ]
            if len(entries) == len(shown):
                rows.append(DifferenceRow(a, b, turns[shown[0]]["n"], entries))
        tables.append(DifferenceTable(split, shown, rows))
    return tables


def signed(value: float, digits: int) -> str:
    """A difference with its sign; a rounded zero reads +0, not as a loss of -0."""
    text = f"{value:+.{digits}f}"
    return text.replace("-0." + "0" * digits, "+0." + "0" * digits)


def task_counts(metrics: Metrics) -> dict[str, int]:
    counts: dict[str, int] = {}
    for splits in metrics.values():
        for split, modes in splits.items():
            for cell in modes.values():
                counts[split] = max(counts.get(split, 0), cell["n"])
    return {split: counts[split] for split in splits_of(metrics)}


def turns_label(metrics: Metrics, column: Column) -> int:
    return max(
        (cell["max_turns"] for m in metrics if (cell := cell_of(metrics, m, column))), default=0
    )


@dataclass(frozen=True)
class Table:
    """A plain table; the templates format its values (floats to two digits, None as n/a)."""

    headers: list[str]
    rows: list[list[Any]]
    name_columns: int  # the leading columns that name the row (left-aligned in HTML)


def rate_rows(metrics: Metrics, keys: Sequence[str]) -> list[list[Any]]:
    """One row per (model, split, mode): the named metrics of that cell (None, shown as n/a,
    for one a metrics file predates)."""
    rows = []
    for model in metrics:
        for split, mode in columns_of(metrics):
            cell = cell_of(metrics, model, (split, mode))
            if cell is not None:
                rows.append([model, split, mode, *[cell.get(key) for key in keys]])
    return rows


def plasticity_table(metrics: Metrics) -> Table:
    headers = [
        "model", "split", "mode", "wrong→right", "on the question", "closer", "toward", "repeat",
        "verbatim repeat",
    ]  # fmt: skip
    keys = [
        "flip_wrong_to_right", "on_question_rate", "closer_rate", "toward_rate", "repeat_rate",
        "verbatim_repeat_rate",
    ]  # fmt: skip
    return Table(headers, rate_rows(metrics, keys), 3)


def with_interval(difference: Mapping[str, Any]) -> str:
    low, high = difference["ci95"]
    return f"{signed(difference['diff'], 3)} [{signed(low, 3)}, {signed(high, 3)}]"


def feedback_use_table(rows: Sequence[Comparison]) -> Table:
    """The toward rate after a critique and after a bare retry, their difference and how much
    it exceeds the base model's, with paired intervals (empty without numeric answers)."""
    headers = ["model", "split", "critique", "retry", "critique - retry", "that minus base's"]
    return Table(
        headers,
        [
            [
                row["model"],
                row["split"],
                row["critique"],
                row["retry"],
                with_interval(row),
                with_interval(row["minus_base"]) if row["minus_base"] else None,
            ]
            for row in rows
        ],
        2,
    )


def sycophancy_table(metrics: Metrics) -> Table:
    headers = ["model", "split", "mode", "probes", "abandon rate"]
    keys = ["sycophancy_probes", "sycophancy_abandon_rate"]
    return Table(headers, rate_rows(metrics, keys), 3)


LEAK_HEADERS = ["model", "mode", "critiques", "leak rate", "fallback rate", "leaks by check"]


def leak_rows(metrics: Metrics) -> list[list[Any]]:
    """Leak and fallback rates per (model, mode), pooled over splits, for guarded modes, with
    the rate of each leak check that fired (metrics files older than the per-check rates show
    "-")."""
    pooled: dict[tuple[str, str], list[float]] = {}
    by_check: dict[tuple[str, str], dict[str, float]] = {}
    for model, splits in metrics.items():
        for modes in splits.values():
            for mode, cell in modes.items():
                if cell["leak_rate"] is None:
                    continue
                total = pooled.setdefault((model, mode), [0, 0.0, 0.0])
                total[0] += cell["critiques"]
                total[1] += cell["leak_rate"] * cell["critiques"]
                total[2] += (cell["fallback_rate"] or 0.0) * cell["critiques"]
                checks = by_check.setdefault((model, mode), {})
                for check, share in (cell.get("leak_rate_by_check") or {}).items():
                    checks[check] = checks.get(check, 0.0) + (share or 0.0) * cell["critiques"]
    return [
        [
            model,
            mode,
            int(n),
            leaked / n if n else None,
            fell / n if n else None,
            _checks_text(by_check[model, mode], n),
        ]
        for (model, mode), (n, leaked, fell) in pooled.items()
    ]


def _checks_text(counts: dict[str, float], critiques: float) -> str:
    fired = [
        f"{check.replace('_', ' ')} {count / critiques:.1%}"
        for check, count in counts.items()
        if count and critiques
    ]
    return ", ".join(fired) or "-"


ATTACK_HEADERS = ["split", "mode", "tasks", "critiques", "attempted", "delivered", "caught by"]


def attack_table(attacks: Attacks | None) -> Table | None:
    """The red_team stage's leak rates (``eval.red_team_path``) as a table; None when the stage
    did not run, so the report says so instead of showing an empty table."""
    if attacks is None:
        return None
    rows = [
        [
            split,
            mode,
            rates["tasks"],
            int(rates["critiques"]),
            rates["attempted"],
            rates["delivered"],
            # The stage wrote shares of critiques already, so they are divided by 1.
            _checks_text(
                {check: share or 0.0 for check, share in rates["leak_rate_by_check"].items()}, 1
            ),
        ]
        for split, modes in attacks.items()
        for mode, rates in modes.items()
    ]
    return Table(ATTACK_HEADERS, rows, 2)


def context_notes(metrics: Metrics) -> list[str]:
    """Where the model's context length shaped the numbers, one line per model and split."""
    notes = []
    for model, splits in metrics.items():
        for split, modes in splits.items():
            skipped = max(cell["skipped_tasks"] for cell in modes.values())
            ended = {mode: cell["context_exhausted"] for mode, cell in modes.items()}
            parts = []
            if skipped:
                parts.append(f"{skipped} task(s) left out (the prompt alone fills the context)")
            if any(ended.values()):
                per_mode = ", ".join(f"{n} under {mode}" for mode, n in ended.items() if n)
                parts.append(f"episodes ended early when the conversation outgrew it: {per_mode}")
            if parts:
                notes.append(f"{model} on {split}: " + "; ".join(parts))
    return notes


# ---------------------------------------------------------------- figures
def build_figures(metrics: Metrics) -> Figures:
    figures = Figures()
    drawn = {f"accuracy_{split}": accuracy_figure(metrics, split) for split in splits_of(metrics)}
    drawn["plasticity"] = plasticity_figure(metrics)
    drawn["sycophancy"] = sycophancy_figure(metrics)
    for name, figure in drawn.items():
        figures.svg[name] = Markup(to_svg(figure))
        figures.png[name] = to_png(figure)
    return figures


# ---------------------------------------------------------------- conversations
def clip(text: str, limit: int = MAX_TEXT_CHARS) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}\n… ({len(text) - limit} more characters)"


@dataclass(frozen=True)
class Utterance:
    """One message of a conversation as the report shows it."""

    kind: str  # task | student | teacher
    label: str
    text: str
    notes: list[str]
    correct: bool | None = None


def feedback_label(episode: Episode, mode: str) -> str:
    if episode.teacher == PROBE_TEACHER:
        return "Probe: a wrong critique of a correct answer"
    return FEEDBACK_LABELS.get(mode, mode)


def student_notes(turn: Turn, repeated: bool) -> list[str]:
    answer = f"read as “{turn.extracted}”" if turn.extracted is not None else "no answer found"
    notes = [("✓ correct" if turn.correct else "✗ wrong") + f" · {answer}"]
    if repeated:
        notes.append("repeats the previous wrong answer")
    return notes


def teacher_notes(turn: Turn) -> list[str]:
    if not turn.leaked_attempts:
        return []
    fired = [check.replace("_", " ") for check in LEAK_CHECKS if turn.leak.get(check)]
    why = f" ({', '.join(fired)})" if fired else ""
    note = f"leak guard: rejected {turn.leaked_attempts} critique(s) that revealed the answer{why}"
    if turn.fell_back:
        note += "; the fixed fallback message was sent instead"
    return [note]


def utterances(episode: Episode, mode: str) -> list[Utterance]:
    prompt = episode.student_visible[0] if episode.student_visible else ""
    shown = [Utterance("task", "Task", clip(prompt), [])]
    repeats = set(repeated_attempts(episode))
    attempt = 0
    for turn in episode.turns:
        if turn.role == "student":
            attempt += 1
            shown.append(
                Utterance(
                    "student",
                    f"Student · attempt {attempt}",
                    clip(turn.text),
                    student_notes(turn, attempt in repeats),
                    bool(turn.correct),
                )
            )
        else:
            label = feedback_label(episode, mode)
            shown.append(Utterance("teacher", label, clip(turn.text), teacher_notes(turn)))
    return shown


def outcome(episode: Episode) -> str:
    if episode.teacher == PROBE_TEACHER:
        kept = episode.student_turns[-1].correct
        return "kept the correct answer" if kept else "abandoned the correct answer"
    if episode.solved_at is not None:
        return f"solved at turn {episode.solved_at}"
    if episode.end_reason == "context_limit":
        return "not solved (the conversation outgrew the model's context)"
    return f"not solved in {len(episode.student_turns)} attempt(s)"


@dataclass(frozen=True)
class ShownEpisode:
    """An example conversation as both reports show it."""

    title: str
    why: str
    model: str
    split: str
    mode: str
    task_id: str
    outcome: str
    utterances: list[Utterance]


def shown_episode(example: Example) -> ShownEpisode:
    episode = example.episode
    return ShownEpisode(
        example.title,
        example.why,
        example.model,
        example.split,
        example.mode,
        episode.task_id,
        outcome(episode),
        utterances(episode, example.mode),
    )


# ---------------------------------------------------------------- the report's data
@dataclass(frozen=True)
class ReportData:
    """Everything the report shows, computed once: both templates render this, so the HTML page
    and the Markdown report cannot disagree on a number."""

    title: str
    models: list[str]
    counts: str  # tasks per split
    results: AccuracyTable  # at the last turn
    turn1: AccuracyTable
    context_notes: list[str]
    differences: list[DifferenceTable]
    splits: list[str]  # one accuracy-by-turn figure each
    plasticity: Table
    feedback_use: Table
    sycophancy: Table
    leaks: Table
    attacks: Table | None  # the red_team stage's table; None when it did not run
    fix: list[ShownEpisode] | None  # (base repeats, rl2f fixes)
    fix_missing_reason: str
    others: list[ShownEpisode]


def report_data(
    metrics: Metrics,
    examples: Examples,
    comparisons: Sequence[Comparison] = (),
    attacks: Attacks | None = None,
    feedback_use: Sequence[Comparison] = (),
) -> ReportData:
    counts = ", ".join(f"{split}: {n}" for split, n in task_counts(metrics).items())
    fix = [shown_episode(e) for e in examples.fix] if examples.fix is not None else None
    return ReportData(
        title=TITLE,
        models=list(metrics),
        counts=counts,
        results=accuracy_table(metrics, "last"),
        turn1=accuracy_table(metrics, "first"),
        context_notes=context_notes(metrics),
        differences=difference_tables(comparisons),
        splits=splits_of(metrics),
        plasticity=plasticity_table(metrics),
        feedback_use=feedback_use_table(feedback_use),
        sycophancy=sycophancy_table(metrics),
        leaks=Table(LEAK_HEADERS, leak_rows(metrics), 2),
        attacks=attack_table(attacks),
        fix=fix,
        fix_missing_reason=examples.fix_missing_reason,
        others=[shown_episode(e) for e in examples.others],
    )


# ---------------------------------------------------------------- templates
# Underscores stay: GitHub Markdown does not read them as emphasis inside words (eval_id).
_MD_SPECIAL = re.compile(r"([\\`*\[\]<>|])")


def md_escape(text: Any) -> str:
    return _MD_SPECIAL.sub(r"\\\1", str(text)).replace("\n", " ")


def md_block(text: str) -> str:
    """A fenced block that the text cannot close early."""
    longest = max((len(run) for run in re.findall(r"~+", text)), default=0)
    fence = "~" * max(4, longest + 1)
    return f"{fence}text\n{text}\n{fence}"


def cell_text(value: Any) -> str:
    """A table value as shown: floats (rates) to two digits, a missing one as n/a."""
    return fmt(value) if isinstance(value, float) or value is None else str(value)


def badge_kind(note: str) -> str:
    """The CSS class of an utterance note: a verdict, or a warning (repeat, leak)."""
    return "ok" if note.startswith("✓") else "bad" if note.startswith("✗") else "warn"


@cache
def environment() -> jinja2.Environment:
    """The report's templates, loaded from the package (pyproject.toml ships them as package
    data), so an installed rl2f finds them too."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("rl2f", "templates"),
        # HTML escapes every value unless it is Markup; Markdown escapes with |md where needed.
        autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",), default=False),
        undefined=jinja2.StrictUndefined,  # a misspelt field fails instead of printing nothing
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        fmt=fmt, signed=signed, cell=cell_text, md=md_escape, md_block=md_block, badge=badge_kind
    )
    return env


def render_html(data: ReportData, figures: Figures) -> str:
    return environment().get_template("report.html.j2").render(data=data, figures=figures.svg)


def render_markdown(data: ReportData) -> str:
    page = environment().get_template("report.md.j2").render(data=data, figures_dir=FIGURES_DIR)
    return page.rstrip() + "\n"


def html_episode(example: Example) -> str:
    """One conversation as HTML (the macro report.html.j2 uses)."""
    macros = environment().get_template("macros.html.j2").module
    return str(macros.episode(shown_episode(example)))


def md_episode(example: Example) -> str:
    """One conversation as Markdown (the macro report.md.j2 uses)."""
    macros = environment().get_template("macros.md.j2").module
    return str(macros.episode(shown_episode(example)))


# ---------------------------------------------------------------- entry points
def build_report(
    metrics: Metrics,
    cells: Mapping[str, Sequence[StoredCell]],
    comparisons: Sequence[Comparison] = (),
    attacks: Attacks | None = None,
    feedback_use: Sequence[Comparison] = (),
) -> Report:
    """The report of validated ``metrics``, the stored evaluation episodes (by model), the
    rows of comparisons.json, the red_team stage's leak rates (None: it did not run) and the
    rows of :func:`~rl2f.evaluation.comparisons.feedback_use_rows`."""
    figures = build_figures(metrics)
    data = report_data(metrics, choose_examples(cells), comparisons, attacks, feedback_use)
    return Report(
        html=render_html(data, figures),
        markdown=render_markdown(data),
        figures={f"{name}.png": png for name, png in figures.png.items()},
        fix_example=data.fix is not None,
    )


def write_report(report: Report, out_dir: Path) -> dict[str, Path]:
    """Writes report.html, report.md and figures/*.png atomically; returns their paths."""
    paths = {"html": out_dir / "report.html", "markdown": out_dir / "report.md"}
    figures_dir = out_dir / FIGURES_DIR
    figures_dir.mkdir(parents=True, exist_ok=True)
    for stale in figures_dir.glob("*.png"):
        if stale.name not in report.figures:
            stale.unlink()
    for name, png in report.figures.items():
        atomic_write_bytes(figures_dir / name, png)
    atomic_write_text(paths["markdown"], report.markdown)
    atomic_write_text(paths["html"], report.html)
    paths["figures"] = figures_dir
    return paths
