"""``rl2f report``: ``reports/report.html`` (one self-contained page) and ``reports/report.md``
(with ``reports/figures/*.png``) from the evaluation's metrics and episodes.

It reads only ``eval.metrics_path`` and ``eval.episodes_dir``, so it runs the same on the
outputs of one ``rl2f evaluate`` and on Kubeflow's merged per-model results.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from rl2f.config import Config
from rl2f.evaluation.episode_files import read_model_cells
from rl2f.evaluation.schema import read_metrics
from rl2f.report import build_report, write_report
from rl2f.tracking import active

log = logging.getLogger(__name__)

REPORT_DIR = Path("reports")


def run(cfg: Config) -> dict[str, Any]:
    metrics = read_metrics(cfg.eval.metrics_path)
    cells = {model: read_model_cells(cfg.eval.episodes_dir, model) for model in metrics}
    for model, stored in cells.items():
        if not stored:
            log.warning(
                "%s: no episodes under %s; no examples from it", model, cfg.eval.episodes_dir
            )
    report = build_report(metrics, cells)
    paths = write_report(report, REPORT_DIR)
    mlflow = active()
    if mlflow is not None:
        mlflow.log_artifact(str(paths["html"]), artifact_path="report")
        mlflow.log_artifact(str(paths["markdown"]), artifact_path="report")
        mlflow.log_artifacts(str(paths["figures"]), artifact_path="report/figures")
    log.info("wrote %s and %s", paths["html"], paths["markdown"])
    return {
        "models": len(metrics),
        "figures": len(report.figures),
        "html_bytes": len(report.html.encode()),
        "fix_example_found": report.fix_example,
    }
