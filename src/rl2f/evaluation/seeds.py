"""The spread of a whole run over training seeds (``make seeds``).

One run is one draw of everything random in training: the tiny model's initialisation and SFT
order, the GRPO rollouts, the distillation order. ``make seeds`` repeats ``dvc repro`` with those
seeds changed (the evaluation tasks and its random numbers stay fixed) and keeps each run's
``metrics.json`` and ``comparisons.json`` under ``reports/seeds/<seed>/``; this module reads
them back and reports, for the headline numbers, the mean, the standard deviation and the range
over seeds, and in how many seeds a paired difference's interval lay above zero; and, from the
cells' ``toward_rate``, how much more often each model's next number moved the answer's way
after a critique than after a bare retry, and that gap minus the base model's.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rl2f.errors import UserError
from rl2f.evaluation.comparisons import CRITIQUE_MODE, REFERENCE_MODEL, RETRY_MODE
from rl2f.tasks.io import atomic_write_text

# The paired differences the README's targets are about.
HEADLINE_PAIRS = (
    (("rl2f", "teacher"), ("base", "teacher")),
    (("rl2f", "teacher"), ("single_turn", "teacher")),
    (("rl2f", "teacher"), ("rl2f", "retry")),
    (("single_turn", "teacher"), ("base", "teacher")),
    (("rl2f_critic", "self"), ("base", "self")),
)


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: not found (did that seed's run finish?)") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text (byte {exc.object[exc.start]:#x})") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot be read ({exc.strerror})") from None


def spread(values: Sequence[float]) -> dict[str, float | int]:
    return {
        "n": len(values),
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
    }


def summarise(run_dirs: Sequence[Path]) -> dict[str, Any]:
    """Accuracy (turn 1 and last turn) of every cell present in every run, and the last-turn
    paired differences of :data:`HEADLINE_PAIRS`, each as a spread over the runs."""
    if not run_dirs:
        raise UserError("seeds: no run folders to summarise")
    metrics = [_read(Path(d) / "metrics.json") for d in run_dirs]
    comparisons = [_read(Path(d) / "comparisons.json") for d in run_dirs]
    accuracy = []
    for model, splits in metrics[0].items():
        for split, modes in splits.items():
            for mode in modes:
                cells = [m.get(model, {}).get(split, {}).get(mode) for m in metrics]
                if any(cell is None for cell in cells):
                    continue
                accuracy.append(
                    {
                        "model": model,
                        "split": split,
                        "mode": mode,
                        "turn1": spread([c["turn1_acc"] for c in cells]),
                        "final": spread([c["final_acc"] for c in cells]),
                    }
                )
    differences = []
    for a, b in HEADLINE_PAIRS:
        for split in sorted({row["split"] for rows in comparisons for row in rows}):
            last = [_last_turn(rows, split, a, b) for rows in comparisons]
            if any(row is None for row in last):
                continue
            differences.append(
                {
                    "split": split,
                    "a": {"model": a[0], "mode": a[1]},
                    "b": {"model": b[0], "mode": b[1]},
                    "turn": last[0]["turn"],
                    "diff": spread([row["diff"] for row in last]),
                    "ci_above_zero": sum(row["ci95"][0] > 0 for row in last),
                }
            )
    return {
        "runs": [str(d) for d in run_dirs],
        "accuracy": accuracy,
        "differences": differences,
        "feedback_use": feedback_use(metrics),
    }


def feedback_use(metrics: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (split, model) whose critique and retry cells have a toward rate in every run: the
    spread of the gap (critique minus retry) and, where the base has one too, of the gap minus
    the base's. Metrics files written before the toward rate have no rows."""
    splits = {split for model_splits in metrics[0].values() for split in model_splits}
    base_gaps = {split: _toward_gaps(metrics, REFERENCE_MODEL, split) for split in splits}
    rows = []
    for model, model_splits in metrics[0].items():
        for split in model_splits:
            gap = _toward_gaps(metrics, model, split)
            if gap is None:
                continue
            base = None if model == REFERENCE_MODEL else base_gaps[split]
            rows.append(
                {
                    "split": split,
                    "model": model,
                    "gap": spread(gap),
                    "minus_base": None
                    if base is None
                    else spread([g - b for g, b in zip(gap, base, strict=True)]),
                }
            )
    return rows


def _toward_gaps(metrics: Sequence[dict[str, Any]], model: str, split: str) -> list[float] | None:
    """Per run, the model's toward rate after a critique minus after a retry; None when a run
    lacks either."""
    gaps = []
    for run in metrics:
        modes = run.get(model, {}).get(split, {})
        critique, retry = (
            modes.get(mode, {}).get("toward_rate") for mode in (CRITIQUE_MODE, RETRY_MODE)
        )
        if critique is None or retry is None:
            return None
        gaps.append(critique - retry)
    return gaps


def _last_turn(rows: list[dict], split: str, a: tuple, b: tuple) -> dict | None:
    matching = [
        row
        for row in rows
        if row["split"] == split
        and (row["a"]["model"], row["a"]["mode"]) == a
        and (row["b"]["model"], row["b"]["mode"]) == b
    ]
    return max(matching, key=lambda row: row["turn"]) if matching else None


def markdown(summary: dict[str, Any]) -> str:
    def fmt(s: dict) -> str:
        return f"{s['mean']:.3f} ± {s['std']:.3f} [{s['min']:.3f}, {s['max']:.3f}]"

    runs = len(summary["runs"])
    lines = [
        f"# Spread over {runs} training seeds",
        "",
        "Mean ± standard deviation [min, max] over seeds.",
        "",
        "| a | b | split | last turn | diff | seeds with CI above 0 |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in summary["differences"]:
        a, b = row["a"], row["b"]
        lines.append(
            f"| {a['model']}/{a['mode']} | {b['model']}/{b['mode']} | {row['split']} | "
            f"{row['turn']} | {fmt(row['diff'])} | {row['ci_above_zero']}/{runs} |"
        )
    lines += ["", "| model | split | mode | turn 1 | last turn |", "| --- " * 5 + "|"]
    for row in summary["accuracy"]:
        lines.append(
            f"| {row['model']} | {row['split']} | {row['mode']} | {fmt(row['turn1'])} | "
            f"{fmt(row['final'])} |"
        )
    if summary["feedback_use"]:
        lines += [
            "",
            "Following the critique's direction: toward rate (among changed numbers after a "
            "wrong one, the share that moved the answer's way) after a critique minus after a "
            "bare retry.",
            "",
            "| model | split | critique - retry | that minus base's |",
            "| --- " * 4 + "|",
        ]
        for row in summary["feedback_use"]:
            minus_base = fmt(row["minus_base"]) if row["minus_base"] else "n/a"
            lines.append(f"| {row['model']} | {row['split']} | {fmt(row['gap'])} | {minus_base} |")
    return "\n".join(lines) + "\n"


def write_summary(run_dirs: Sequence[Path], out_dir: Path) -> dict[str, Any]:
    summary = summarise(run_dirs)
    atomic_write_text(out_dir / "seeds.json", json.dumps(summary, indent=2) + "\n")
    atomic_write_text(out_dir / "seeds.md", markdown(summary))
    return summary
