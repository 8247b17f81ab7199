"""``rl2f evaluate``: every model on every evaluation split under every feedback mode (extra
models only under ``eval.extra_model_modes``).

Writes the episodes (``<eval.episodes_dir>/<model>/<split>/<mode>[.probe].parquet``), the
metrics (``eval.metrics_path``, validated against ``metrics.schema.json``) and the DVC plot
data (``<eval.plots_dir>/<split>.csv``: long rows of model, split, mode, turn, acc, lo, hi,
so Kubeflow's per-model results concatenate into the same files). Each model gets its own
MLflow child run, ``evaluate/<model>``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from rl2f.config import Config
from rl2f.errors import UserError
from rl2f.evaluation.episode_files import clear_model, write_cell
from rl2f.evaluation.metrics import cell_metrics
from rl2f.evaluation.runner import (
    Cell,
    EvalSplit,
    TeacherPool,
    check_modes,
    eval_settings,
    evaluate_model,
    load_eval_splits,
    model_sources,
    modes_for_model,
)
from rl2f.evaluation.schema import validate_metrics
from rl2f.rollout import RolloutSettings
from rl2f.tasks.io import atomic_write_text
from rl2f.tracking import active, stage_run

log = logging.getLogger(__name__)

PLOT_COLUMNS = ["model", "split", "mode", "turn", "acc", "lo", "hi"]
SECTIONS = ("eval", "teacher", "rollout")


def metrics_of(cell: Cell, cfg: Config) -> dict[str, Any]:
    return cell_metrics(
        cell.episodes,
        max_turns=cell.max_turns,
        bootstrap_samples=cfg.eval.bootstrap_samples,
        seed=cfg.eval.seed,
        probes=cell.probes,
        leak_checked=cell.leak_checked,
        skipped_tasks=cell.skipped_tasks,
    )


def plot_rows(metrics: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Split -> rows of the accuracy-by-turn plot."""
    rows: dict[str, list[dict[str, Any]]] = {}
    for model, splits in metrics.items():
        for split, modes in splits.items():
            for mode, cell in modes.items():
                for turn, (acc, (lo, hi)) in enumerate(
                    zip(cell["acc_by_turn"], cell["ci95_by_turn"], strict=True), start=1
                ):
                    rows.setdefault(split, []).append(
                        dict(
                            zip(PLOT_COLUMNS, [model, split, mode, turn, acc, lo, hi], strict=True)
                        )
                    )
    return rows


def write_plots(plots_dir: Path, metrics: dict[str, Any]) -> list[Path]:
    import pandas as pd

    plots_dir.mkdir(parents=True, exist_ok=True)
    for stale in plots_dir.glob("*.csv"):
        stale.unlink()
    written = []
    for split, rows in plot_rows(metrics).items():
        path = plots_dir / f"{split}.csv"
        frame = pd.DataFrame(rows, columns=PLOT_COLUMNS)
        atomic_write_text(path, frame.to_csv(index=False, float_format="%.6g"))
        written.append(path)
    return written


def summary_table(metrics: dict[str, Any]) -> str:
    """Final-turn accuracy, one line per model and cell, for the terminal."""
    width = max([14, *map(len, metrics)])  # extra models' names may be longer
    lines = [f"{'model':<{width}} {'split':<12} {'mode':<8} {'n':>4} {'turn 1':>7} {'final':>7}"]
    for model, splits in metrics.items():
        for split, modes in splits.items():
            for mode, cell in modes.items():
                lines.append(
                    f"{model:<{width}} {split:<12} {mode:<8} {cell['n']:>4} "
                    f"{cell['turn1_acc']:>7.3f} {cell['final_acc']:>7.3f}"
                )
    return "\n".join(lines)


def evaluate_one(
    cfg: Config,
    name: str,
    source: str,
    splits: list[EvalSplit],
    modes: list[str],
    teachers: TeacherPool,
    settings: RolloutSettings,
) -> dict[str, Any]:
    """Roll out, store and score every cell of one model inside its own MLflow child run."""
    from rl2f.engines import make_engine
    from rl2f.evaluation.mlflow_log import log_cell_metrics, log_episode_table, log_traces

    episodes_dir = Path(cfg.eval.episodes_dir)
    results: dict[str, Any] = {}
    with stage_run(cfg, f"evaluate/{name}", sections=SECTIONS) as run:
        if run:
            run.set_tags({"rl2f.model": name, "rl2f.model_source": source})
        log.info("evaluating %s (%s)", name, source)
        student = make_engine(cfg.rollout.engine, source, dtype=cfg.model.dtype)
        try:
            clear_model(episodes_dir, name)
            cells = []
            for cell in evaluate_model(
                name,
                student,
                splits,
                modes,
                teachers.for_mode,
                settings,
                sycophancy_probe=cfg.eval.sycophancy_probe,
            ):
                write_cell(episodes_dir, name, cell.split, cell.mode, cell.episodes, cell.probes)
                metrics = metrics_of(cell, cfg)
                results.setdefault(cell.split, {})[cell.mode] = metrics
                log.info(
                    "%s %s %s: accuracy by turn %s",
                    name,
                    cell.split,
                    cell.mode,
                    " ".join(f"{v:.3f}" for v in metrics["acc_by_turn"]),
                )
                if run:
                    log_cell_metrics(run, cell.split, cell.mode, metrics)
                cells.append(cell)
        finally:
            student.close()
        if run:
            log_episode_table(run, cells)
            if cfg.tracking.traces:
                log_traces(run, cells, cfg.tracking.max_traces)
            run.log_dict(results, "metrics.json")
    return results


def log_teacher_engine(stats: dict[str, int]) -> None:
    """An HTTP teacher's retries, rate limits and failures, in the log and the stage's run."""
    if not stats:
        return
    log.info("teacher engine: %s", stats)
    run = active()
    if run is not None:
        run.log_metrics({f"teacher_engine/{name}": float(n) for name, n in stats.items()})


def run(cfg: Config) -> dict[str, Any]:
    sources = model_sources(cfg)
    modes = check_modes(cfg)
    # Resolved up front so a bad eval.extra_model_modes fails before any model is evaluated.
    model_modes = {name: modes_for_model(cfg, name, modes) for name in sources}
    splits = load_eval_splits(cfg)
    teachers = TeacherPool(cfg)
    settings = eval_settings(cfg)
    metrics: dict[str, Any] = {}
    try:
        for name, source in sources.items():
            modes_of = model_modes[name]
            results = evaluate_one(cfg, name, source, splits, modes_of, teachers, settings)
            if results:
                metrics[name] = results
            else:
                log.warning("%s: no evaluation task fits the model's context; not evaluated", name)
    finally:
        engine_stats = teachers.engine_stats()
        teachers.close()
        settings.close()
    log_teacher_engine(engine_stats)

    if not metrics:
        raise UserError("evaluate: no model could be evaluated (no task fits any model's context)")
    metrics_path = Path(cfg.eval.metrics_path)
    validate_metrics(metrics, str(metrics_path))
    atomic_write_text(metrics_path, json.dumps(metrics, indent=2) + "\n")
    write_plots(Path(cfg.eval.plots_dir), metrics)
    print(summary_table(metrics))
    log.info("wrote %s and plot data under %s", metrics_path, cfg.eval.plots_dir)
    return metrics
