"""The evaluation report: one self-contained HTML page and its Markdown twin.

The HTML page has no scripts and no external resources: figures are inline SVG and the style
is inline, so it opens the same from a laptop, a DVC workspace, an MLflow artifact or a
Kubeflow HTML output, with no network. The Markdown report carries the same tables and
conversations, with the figures as PNG files beside it (``figures/``).

Sections follow how people read a result: the paper-style results table, paired differences
between models (is the gap real?), accuracy curves, plasticity, sycophancy, leaks, then example
conversations.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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

    svg: dict[str, str] = field(default_factory=dict)
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


def accuracy_table(
    metrics: Metrics, turn: str
) -> tuple[list[Column], list[tuple[str, list[AccuracyEntry | None]]]]:
    """Rows of (model, entries per column) for accuracy at the ``"first"`` or ``"last"`` turn."""
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
        rows.append((model, entries))
    return columns, rows


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


def rate_rows(metrics: Metrics, keys: Sequence[str]) -> list[list[Any]]:
    """One row per (model, split, mode): the named metrics of that cell."""
    rows = []
    for model in metrics:
        for split, mode in columns_of(metrics):
            cell = cell_of(metrics, model, (split, mode))
            if cell is not None:
                rows.append([model, split, mode, *[cell[key] for key in keys]])
    return rows


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
        figures.svg[name] = to_svg(figure)
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


# ---------------------------------------------------------------- HTML
STYLE = """
:root { --fg: #1f2328; --muted: #59636e; --line: #d0d7de; --soft: #f6f8fa;
        --ok: #116329; --ok-bg: #dafbe1; --bad: #a40e26; --bad-bg: #ffebe9;
        --student: #ddf4ff; --teacher: #fff8c5; }
* { box-sizing: border-box; }
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--fg);
       margin: 0; line-height: 1.45; }
main { max-width: 1180px; margin: 0 auto; padding: 1.5rem 2rem 4rem; }
h1 { font-size: 1.6rem; margin-bottom: 0.2rem; }
h2 { font-size: 1.25rem; border-bottom: 1px solid var(--line); padding-bottom: 0.3rem;
     margin-top: 2.2rem; }
h3 { font-size: 1.05rem; margin-top: 1.6rem; }
p.lead, p.note, ul.note, .meta { color: var(--muted); }
nav a { margin-right: 1rem; }
table { border-collapse: collapse; margin: 0.8rem 0; font-size: 0.88rem; }
th, td { border: 1px solid var(--line); padding: 0.3rem 0.55rem; text-align: right; }
th { background: var(--soft); text-align: center; }
td.name, th.name { text-align: left; font-weight: 600; }
td .ci { color: var(--muted); font-size: 0.8em; white-space: nowrap; }
td.best { background: #eef9f0; }
td.resolved { background: #eef9f0; }
figure { margin: 1rem 0; overflow-x: auto; }
figure svg { max-width: 100%; height: auto; display: block; }
figcaption { color: var(--muted); font-size: 0.85rem; }
details { margin: 0.6rem 0; }
summary { cursor: pointer; color: var(--muted); }
.episode { border: 1px solid var(--line); border-radius: 8px; margin: 1rem 0;
           padding: 0.8rem 1rem; }
.episode header { font-size: 0.85rem; color: var(--muted); margin-bottom: 0.5rem; }
.episode h4 { margin: 0 0 0.2rem; font-size: 1rem; color: var(--fg); }
.msg { border-radius: 8px; padding: 0.5rem 0.75rem; margin: 0.45rem 0; max-width: 88%; }
.msg .who { font-size: 0.78rem; font-weight: 600; color: var(--muted); }
.msg pre { white-space: pre-wrap; word-break: break-word; margin: 0.25rem 0;
           font-family: ui-monospace, "SFMono-Regular", Menlo, monospace; font-size: 0.82rem; }
.msg.task { background: var(--soft); border: 1px dashed var(--line); }
.msg.student { background: var(--student); margin-left: auto; }
.msg.teacher { background: var(--teacher); }
.msg.student.correct { border-left: 3px solid var(--ok); }
.msg.student.wrong { border-left: 3px solid var(--bad); }
.badge { display: inline-block; font-size: 0.75rem; border-radius: 4px; padding: 0 0.4rem;
         margin-right: 0.3rem; }
.badge.ok { background: var(--ok-bg); color: var(--ok); }
.badge.bad { background: var(--bad-bg); color: var(--bad); }
.badge.warn { background: #fff1e5; color: #953800; }
.pair { display: grid; grid-template-columns: 1fr 1fr; gap: 1rem; }
@media (max-width: 900px) { .pair { grid-template-columns: 1fr; } }
"""


def esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def html_accuracy_table(metrics: Metrics, turn: str, table_id: str) -> str:
    columns, rows = accuracy_table(metrics, turn)
    splits = list(dict.fromkeys(split for split, _ in columns))
    head_splits = "".join(
        f'<th colspan="{sum(1 for s, _ in columns if s == split)}">{esc(split)}</th>'
        for split in splits
    )
    head_modes = "".join(
        f"<th>{esc(mode)}<br><small>T={turns_label(metrics, (split, mode))}</small></th>"
        for split, mode in columns
    )
    body = []
    for model, entries in rows:
        cells = []
        for entry in entries:
            if entry is None:
                cells.append("<td>–</td>")
                continue
            value = f"{entry.value:.3f}"
            value = f"<strong>{value}</strong>" if entry.best else value
            ci = f'<span class="ci">[{entry.low:.2f}, {entry.high:.2f}]</span>'
            cells.append(f'<td class="{"best" if entry.best else ""}">{value} {ci}</td>')
        body.append(f'<tr><td class="name">{esc(model)}</td>{"".join(cells)}</tr>')
    return (
        f'<table id="{table_id}" class="results"><thead>'
        f'<tr><th class="name" rowspan="2">model</th>{head_splits}</tr>'
        f"<tr>{head_modes}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    )


def html_difference_table(table: DifferenceTable) -> str:
    head = "".join(f"<th>turn {turn}</th>" for turn in table.turns)
    body = []
    for row in table.rows:
        cells = []
        for entry in row.entries:
            value = signed(entry.diff, 3)
            value = f"<strong>{value}</strong>" if entry.resolved else value
            ci = f'<span class="ci">[{signed(entry.low, 2)}, {signed(entry.high, 2)}]</span>'
            cells.append(f'<td class="{"resolved" if entry.resolved else ""}">{value} {ci}</td>')
        body.append(
            f'<tr><td class="name">{esc(row.a)}</td><td class="name">{esc(row.b)}</td>'
            f"<td>{row.n}</td>{''.join(cells)}</tr>"
        )
    return (
        f'<table id="differences-{esc(table.split)}" class="differences"><thead><tr>'
        f'<th class="name">a</th><th class="name">b</th><th>tasks</th>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>"
    )


DIFFERENCES_LEAD = (
    "Accuracy of a minus accuracy of b on the tasks both evaluated, at turn 1 and at the last "
    "turn, with paired 95% bootstrap intervals over tasks (the same resampled tasks for a and "
    "b). Bold: the interval excludes 0."
)


def html_differences(comparisons: Sequence[Comparison]) -> list[str]:
    tables = difference_tables(comparisons)
    if not tables:
        return ['<p class="note">No pair of evaluated cells to compare.</p>']
    parts = []
    for table in tables:
        parts += [f"<h3>{esc(table.split)}</h3>", html_difference_table(table)]
    return parts


def html_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], name_columns: int) -> str:
    def cell(i: int, value: Any) -> str:
        text = fmt(value) if isinstance(value, float) or value is None else str(value)
        css = ' class="name"' if i < name_columns else ""
        return f"<td{css}>{esc(text)}</td>"

    head = "".join(
        f"<th{' class=name' if i < name_columns else ''}>{esc(h)}</th>"
        for i, h in enumerate(headers)
    )
    body = "".join(
        "<tr>" + "".join(cell(i, v) for i, v in enumerate(row)) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def html_figure(svg: str, caption: str) -> str:
    return f"<figure>{svg}<figcaption>{esc(caption)}</figcaption></figure>"


def html_episode(example: Example) -> str:
    episode = example.episode
    messages = []
    for item in utterances(episode, example.mode):
        badges = []
        for note in item.notes:
            css = "ok" if note.startswith("✓") else "bad" if note.startswith("✗") else "warn"
            badges.append(f'<span class="badge {css}">{esc(note)}</span>')
        verdict = {True: " correct", False: " wrong", None: ""}[item.correct]
        messages.append(
            f'<div class="msg {item.kind}{verdict}"><div class="who">{esc(item.label)}</div>'
            f"<pre>{esc(item.text)}</pre>{''.join(badges)}</div>"
        )
    header = (
        f"{esc(example.model)} · {esc(example.split)} · {esc(example.mode)} feedback · "
        f"task {esc(episode.task_id)} · {esc(outcome(episode))}"
    )
    return (
        f'<article class="episode"><h4>{esc(example.title)}</h4>'
        f"<header>{header}<br>{esc(example.why)}</header>{''.join(messages)}</article>"
    )


def render_html(
    metrics: Metrics,
    figures: Figures,
    examples: Examples,
    comparisons: Sequence[Comparison] = (),
) -> str:
    counts = ", ".join(f"{split}: {n}" for split, n in task_counts(metrics).items())
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{TITLE}</title><style>{STYLE}</style></head><body><main>",
        f"<h1>{TITLE}</h1>",
        f'<p class="meta">Models: {esc(", ".join(metrics))}. Tasks per split: {esc(counts)}.</p>',
        '<nav><a href="#results">Results</a><a href="#differences">Paired differences</a>'
        '<a href="#curves">Accuracy by turn</a>'
        '<a href="#plasticity">Plasticity</a><a href="#sycophancy">Sycophancy</a>'
        '<a href="#leaks">Leaks</a><a href="#examples">Examples</a></nav>',
        '<section id="results"><h2>Results</h2>',
        '<p class="lead">Cumulative accuracy at the last turn T (share of problems solved at or '
        "before T) under each feedback mode, with 95% bootstrap intervals over tasks. Best per "
        "column in bold.</p>",
        html_accuracy_table(metrics, "last", "results-table"),
        "<h3>Turn-1 accuracy</h3>",
        '<p class="note">Before any feedback: what single-turn training moves.</p>',
        html_accuracy_table(metrics, "first", "turn1-table"),
    ]
    notes = context_notes(metrics)
    if notes:
        items = "".join(f"<li>{esc(note)}</li>" for note in notes)
        parts.append(f'<p class="note">Context length limits:</p><ul class="note">{items}</ul>')
    parts += [
        "</section>",
        '<section id="differences"><h2>Paired differences</h2>',
        f'<p class="lead">{esc(DIFFERENCES_LEAD)}</p>',
        *html_differences(comparisons),
        "</section>",
        '<section id="curves"><h2>Accuracy by turn</h2>',
    ]
    for split in splits_of(metrics):
        parts.append(
            html_figure(
                figures.svg[f"accuracy_{split}"],
                f"{split}: cumulative accuracy by turn, one line per model, 95% intervals shaded.",
            )
        )
    plasticity_headers = ["model", "split", "mode", "wrong→right", "repeat", "verbatim repeat"]
    plasticity = rate_rows(metrics, ["flip_wrong_to_right", "repeat_rate", "verbatim_repeat_rate"])
    parts += [
        "</section>",
        '<section id="plasticity"><h2>Plasticity</h2>',
        '<p class="lead">After a wrong answer and feedback: how often the next answer is right, '
        "and how often the model gives the same wrong answer again (the low-plasticity failure "
        "the paper describes).</p>",
        html_figure(figures.svg["plasticity"], "Flip and repeat rates per split and mode."),
        "<details><summary>Table</summary>",
        html_table(plasticity_headers, plasticity, 3),
        "</details></section>",
        '<section id="sycophancy"><h2>Sycophancy</h2>',
        '<p class="lead">Every first answer that was correct is continued with a critique that '
        "calls it wrong; the rate is how often the model then abandons its correct answer.</p>",
        html_figure(figures.svg["sycophancy"], "Share of correct answers abandoned."),
        "<details><summary>Table</summary>",
        html_table(
            ["model", "split", "mode", "probes", "abandon rate"],
            rate_rows(metrics, ["sycophancy_probes", "sycophancy_abandon_rate"]),
            3,
        ),
        "</details></section>",
        '<section id="leaks"><h2>Leaks</h2>',
        '<p class="lead">Share of privileged critiques whose first version revealed the answer '
        "(each was rejected by the leak guard and regenerated, or replaced by a fixed "
        "message).</p>",
        html_table(LEAK_HEADERS, leak_rows(metrics), 2),
        "</section>",
        '<section id="examples"><h2>Example episodes</h2>',
    ]
    if examples.fix is not None:
        parts.append(
            '<h3>RL2F fixes what the base model repeated</h3><div class="pair">'
            + "".join(html_episode(example) for example in examples.fix)
            + "</div>"
        )
    else:
        parts.append(
            "<h3>RL2F fixes what the base model repeated</h3>"
            '<p class="note" id="no-fix-example">'
            f"Not found: {esc(examples.fix_missing_reason)}.</p>"
        )
    parts += [html_episode(example) for example in examples.others]
    parts.append("</section></main></body></html>")
    return "\n".join(parts)


# ---------------------------------------------------------------- Markdown
# Underscores stay: GitHub Markdown does not read them as emphasis inside words (eval_id).
_MD_SPECIAL = re.compile(r"([\\`*\[\]<>|])")


def md_escape(text: Any) -> str:
    return _MD_SPECIAL.sub(r"\\\1", str(text)).replace("\n", " ")


def md_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def md_accuracy_table(metrics: Metrics, turn: str) -> str:
    columns, rows = accuracy_table(metrics, turn)
    headers = ["model"] + [
        md_escape(f"{split} · {mode} (T={turns_label(metrics, (split, mode))})")
        for split, mode in columns
    ]
    body = []
    for model, entries in rows:
        cells = [md_escape(model)]
        for entry in entries:
            if entry is None:
                cells.append("–")
                continue
            value = f"{entry.value:.3f}"
            cells.append(
                f"{f'**{value}**' if entry.best else value} [{entry.low:.2f}, {entry.high:.2f}]"
            )
        body.append(cells)
    return md_table(headers, body)


def md_difference_table(table: DifferenceTable) -> str:
    headers = ["a", "b", "tasks", *[f"turn {turn}" for turn in table.turns]]
    body = []
    for row in table.rows:
        cells = [md_escape(row.a), md_escape(row.b), str(row.n)]
        for entry in row.entries:
            value = signed(entry.diff, 3)
            interval = f"[{signed(entry.low, 2)}, {signed(entry.high, 2)}]"
            cells.append(f"{f'**{value}**' if entry.resolved else value} {interval}")
        body.append(cells)
    return md_table(headers, body)


def md_differences(comparisons: Sequence[Comparison]) -> list[str]:
    tables = difference_tables(comparisons)
    if not tables:
        return ["No pair of evaluated cells to compare.", ""]
    parts = []
    for table in tables:
        parts += [f"### {md_escape(table.split)}", "", md_difference_table(table), ""]
    return parts


def md_rows(rows: Sequence[Sequence[Any]]) -> list[list[str]]:
    return [
        [fmt(v) if isinstance(v, float) or v is None else md_escape(v) for v in row] for row in rows
    ]


def md_block(text: str) -> str:
    """A fenced block that the text cannot close early."""
    longest = max((len(run) for run in re.findall(r"~+", text)), default=0)
    fence = "~" * max(4, longest + 1)
    return f"{fence}text\n{text}\n{fence}"


def md_episode(example: Example) -> str:
    episode = example.episode
    lines = [
        f"#### {example.title}",
        "",
        f"*{md_escape(example.model)} · {md_escape(example.split)} · {md_escape(example.mode)} "
        f"feedback · task {md_escape(episode.task_id)} · {md_escape(outcome(episode))}.* "
        f"{md_escape(example.why)}",
        "",
    ]
    for item in utterances(episode, example.mode):
        notes = f" — {'; '.join(md_escape(n) for n in item.notes)}" if item.notes else ""
        lines += [f"**{md_escape(item.label)}**{notes}", "", md_block(item.text), ""]
    return "\n".join(lines)


def render_markdown(
    metrics: Metrics, examples: Examples, comparisons: Sequence[Comparison] = ()
) -> str:
    counts = ", ".join(f"{split}: {n}" for split, n in task_counts(metrics).items())
    parts = [
        f"# {TITLE}",
        "",
        f"Models: {md_escape(', '.join(metrics))}. Tasks per split: {md_escape(counts)}.",
        "",
        "## Results",
        "",
        "Cumulative accuracy at the last turn T with 95% bootstrap intervals over tasks; best per "
        "column in bold.",
        "",
        md_accuracy_table(metrics, "last"),
        "",
        "### Turn-1 accuracy",
        "",
        md_accuracy_table(metrics, "first"),
        "",
    ]
    notes = context_notes(metrics)
    if notes:
        parts += ["Context length limits:", "", *[f"- {md_escape(note)}" for note in notes], ""]
    parts += ["## Paired differences", "", DIFFERENCES_LEAD, "", *md_differences(comparisons)]
    parts += ["## Accuracy by turn", ""]
    for split in splits_of(metrics):
        parts += [f"![{split}: accuracy by turn]({FIGURES_DIR}/accuracy_{split}.png)", ""]
    parts += [
        "## Plasticity",
        "",
        "After a wrong answer and feedback: how often the next answer is right, and how often the "
        "same wrong answer comes back.",
        "",
        f"![plasticity]({FIGURES_DIR}/plasticity.png)",
        "",
        md_table(
            ["model", "split", "mode", "wrong→right", "repeat", "verbatim repeat"],
            md_rows(
                rate_rows(metrics, ["flip_wrong_to_right", "repeat_rate", "verbatim_repeat_rate"])
            ),
        ),
        "",
        "## Sycophancy",
        "",
        "Correct first answers continued with a critique that calls them wrong: how often the "
        "model abandons the correct answer.",
        "",
        f"![sycophancy]({FIGURES_DIR}/sycophancy.png)",
        "",
        md_table(
            ["model", "split", "mode", "probes", "abandon rate"],
            md_rows(rate_rows(metrics, ["sycophancy_probes", "sycophancy_abandon_rate"])),
        ),
        "",
        "## Leaks",
        "",
        md_table(LEAK_HEADERS, md_rows(leak_rows(metrics))),
        "",
        "## Example episodes",
        "",
        "### RL2F fixes what the base model repeated",
        "",
    ]
    if examples.fix is not None:
        parts += [md_episode(example) for example in examples.fix]
    else:
        parts += [f"Not found: {md_escape(examples.fix_missing_reason)}.", ""]
    parts += [md_episode(example) for example in examples.others]
    return "\n".join(parts).rstrip() + "\n"


# ---------------------------------------------------------------- entry points
def build_report(
    metrics: Metrics,
    cells: Mapping[str, Sequence[StoredCell]],
    comparisons: Sequence[Comparison] = (),
) -> Report:
    """The report of validated ``metrics``, the stored evaluation episodes (by model) and the
    rows of comparisons.json."""
    figures = build_figures(metrics)
    examples = choose_examples(cells)
    return Report(
        html=render_html(metrics, figures, examples, comparisons),
        markdown=render_markdown(metrics, examples, comparisons),
        figures={f"{name}.png": png for name, png in figures.png.items()},
        fix_example=examples.fix is not None,
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
