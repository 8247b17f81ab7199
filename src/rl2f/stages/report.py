"""``rl2f report``: ``reports/report.html`` (one self-contained page) and ``reports/report.md``
(with ``reports/figures/*.png``) from the evaluation's metrics and episodes, and
``eval.comparisons_path`` (paired differences between models, see
:mod:`rl2f.evaluation.comparisons`). The report also shows how much more often each model's
next number, when it changed, moves the answer's way after a critique than after a bare
retry, with paired intervals (:func:`~rl2f.evaluation.comparisons.feedback_use_rows`).

It reads only ``eval.metrics_path`` and ``eval.episodes_dir`` (and ``eval.red_team_path`` when
the red_team stage ran), so it runs the same on the outputs of one ``rl2f evaluate`` and on
Kubeflow's merged per-model results. That also makes it the one stage that sees every model's
episodes, which the paired comparisons need.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from rl2f.config import Config
from rl2f.episodes import Episode
from rl2f.errors import DataError, decode_utf8, parse_json_object
from rl2f.evaluation.comparisons import CellKey, comparison_rows, feedback_use_rows
from rl2f.evaluation.episode_files import StoredCell, read_model_cells
from rl2f.evaluation.schema import read_metrics
from rl2f.report import build_report, write_report
from rl2f.tasks.io import atomic_write_text
from rl2f.tracking import active

log = logging.getLogger(__name__)

REPORT_DIR = Path("reports")
# What the report reads of each (split, mode) entry the red_team stage wrote.
ATTACK_KEYS = frozenset({"tasks", "critiques", "attempted", "delivered", "leak_rate_by_check"})


def split_turns(metrics: dict[str, Any]) -> dict[str, int]:
    """Each split's turn budget, as the evaluation recorded it."""
    turns: dict[str, int] = {}
    for splits in metrics.values():
        for split, modes in splits.items():
            for cell in modes.values():
                turns[split] = max(turns.get(split, 0), cell["max_turns"])
    return turns


def episodes_by_cell(cells: dict[str, list[StoredCell]]) -> dict[CellKey, list[Episode]]:
    return {
        (cell.model, cell.split, cell.mode): cell.episodes
        for stored in cells.values()
        for cell in stored
    }


def read_attacks(path: Path) -> dict[str, Any] | None:
    """The red_team stage's leak rates; None when it has not run (the report says so)."""
    if not path.exists():
        log.warning("%s not found: the report shows no leak rates under attack", path)
        return None
    attacks = parse_json_object(decode_utf8(path.read_bytes(), str(path)), str(path))
    for split, modes in attacks.items():
        if not isinstance(modes, dict):
            raise DataError(f"{path}: {split} must map feedback modes to leak rates")
        for mode, rates in modes.items():
            if not isinstance(rates, dict) or ATTACK_KEYS - rates.keys():
                needed = ", ".join(sorted(ATTACK_KEYS))
                raise DataError(f"{path}: {split}.{mode} must be an object with {needed}")
    return attacks


def run(cfg: Config) -> dict[str, Any]:
    metrics = read_metrics(cfg.eval.metrics_path)
    cells = {model: read_model_cells(cfg.eval.episodes_dir, model) for model in metrics}
    for model, stored in cells.items():
        if not stored:
            log.warning(
                "%s: no episodes under %s; no examples from it", model, cfg.eval.episodes_dir
            )
    episodes = episodes_by_cell(cells)
    samples, seed = cfg.eval.bootstrap_samples, cfg.eval.seed
    paired = comparison_rows(episodes, samples=samples, seed=seed, max_turns=split_turns(metrics))
    comparisons_path = Path(cfg.eval.comparisons_path)
    atomic_write_text(comparisons_path, json.dumps(paired, indent=2) + "\n")
    feedback_use = feedback_use_rows(episodes, samples=samples, seed=seed)
    report = build_report(
        metrics, cells, paired, read_attacks(Path(cfg.eval.red_team_path)), feedback_use
    )
    paths = write_report(report, REPORT_DIR)
    mlflow = active()
    if mlflow is not None:
        mlflow.log_artifact(str(paths["html"]), artifact_path="report")
        mlflow.log_artifact(str(paths["markdown"]), artifact_path="report")
        mlflow.log_artifacts(str(paths["figures"]), artifact_path="report/figures")
        mlflow.log_artifact(str(comparisons_path), artifact_path="report")
    log.info("wrote %s, %s and %s", paths["html"], paths["markdown"], comparisons_path)
    return {
        "models": len(metrics),
        "figures": len(report.figures),
        "comparisons": len(paired),
        "html_bytes": len(report.html.encode()),
        "fix_example_found": report.fix_example,
        # In the run's summary.json whole, and its numbers as MLflow metrics to compare runs by.
        "feedback_use": feedback_use_summary(feedback_use),
    }


def feedback_use_summary(rows: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """{split: {model: {critique, retry, critique_minus_retry, ci95, minus_base, ...}}}."""
    summary: dict[str, dict[str, dict[str, Any]]] = {}
    for row in rows:
        entry = {
            "critique": row["critique"],
            "retry": row["retry"],
            "critique_minus_retry": row["diff"],
            "critique_minus_retry_ci95": row["ci95"],
        }
        if row["minus_base"]:
            entry["minus_base"] = row["minus_base"]["diff"]
            entry["minus_base_ci95"] = row["minus_base"]["ci95"]
        summary.setdefault(row["split"], {})[row["model"]] = entry
    return summary
