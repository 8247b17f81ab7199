"""The spread of a whole run over training seeds (``make seeds``).

One run is one draw of everything random in training: the tiny model's initialisation and SFT
order, the GRPO rollouts, the distillation order. ``make seeds`` repeats ``dvc repro`` with those
seeds changed (the evaluation tasks and its random numbers stay fixed) and keeps each run's
``metrics.json`` and ``comparisons.json`` under ``reports/seeds/<seed>/``; this module reads
them back and reports, for the headline numbers, the mean, the standard deviation and the range
over seeds, and in how many seeds a paired difference's interval lay above zero.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rl2f.errors import UserError
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
    return {"runs": [str(d) for d in run_dirs], "accuracy": accuracy, "differences": differences}


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
    return "\n".join(lines) + "\n"


def write_summary(run_dirs: Sequence[Path], out_dir: Path) -> dict[str, Any]:
    summary = summarise(run_dirs)
    atomic_write_text(out_dir / "seeds.json", json.dumps(summary, indent=2) + "\n")
    atomic_write_text(out_dir / "seeds.md", markdown(summary))
    return summary
