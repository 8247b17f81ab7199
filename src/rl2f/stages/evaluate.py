"""``rl2f evaluate``: every model on every evaluation split under every feedback mode (extra
models only under ``eval.extra_model_modes``).

Writes the episodes (``<eval.episodes_dir>/<model>/<split>/<mode>[.probe].parquet``), the
metrics (``eval.metrics_path``, validated against ``metrics.schema.json``) and the DVC plot
data (``<eval.plots_dir>/<split>.csv``: long rows of model, split, mode, turn, acc, lo, hi,
so Kubeflow's per-model results concatenate into the same files). Each model gets its own
MLflow child run, ``evaluate/<model>``.

Resumable: each finished (model, split, mode) cell is kept in ``<eval.episodes_dir>.partial``
(outside the folder DVC deletes before rerunning the stage) with a key of its settings, and a
rerun after a crash reuses the cells with a matching key. See rl2f.evaluation.episode_files.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from rl2f.config import Config
from rl2f.cpu_threads import fix_cpu_threads
from rl2f.errors import UserError
from rl2f.evaluation.episode_files import (
    StoredCell,
    load_finished_cell,
    publish_model,
    save_finished_cell,
)
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
from rl2f.tasks.io import (
    atomic_write_text,
    folder_identity,
    partial_dir,
    replace_dir,
    settings_key,
    staging_dir,
)
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
    """One CSV per split, replacing the folder whole (no stale split, no half-written set)."""
    import pandas as pd

    staging = staging_dir(plots_dir)
    written = []
    for split, rows in plot_rows(metrics).items():
        frame = pd.DataFrame(rows, columns=PLOT_COLUMNS)
        atomic_write_text(staging / f"{split}.csv", frame.to_csv(index=False, float_format="%.6g"))
        written.append(plots_dir / f"{split}.csv")
    replace_dir(staging, plots_dir)
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


def cell_key(cfg: Config, source: str, split: EvalSplit, mode: str) -> str:
    """What decides a cell's episodes: a finished cell is reused only under the same key."""
    return settings_key(
        {
            "eval": cfg.eval.model_dump(
                mode="json", include={"num_generations", "seed", "sycophancy_probe"}
            ),
            "rollout": cfg.rollout.model_dump(mode="json", include={"sampling", "engine", "gamma"}),
            "teacher": cfg.teacher.model_dump(mode="json"),
            "dtype": cfg.model.dtype,
            "model": folder_identity(source),
            "split": [split.name, split.max_turns, [task.id for task in split.tasks]],
            "mode": mode,
        }
    )


def finished_cells(
    scratch: Path, name: str, keys: dict[tuple[str, str], str]
) -> dict[tuple[str, str], Cell]:
    """The cells of ``name`` a killed run already finished under the same settings."""
    found = {}
    for (split, mode), key in keys.items():
        loaded = load_finished_cell(scratch, name, split, mode, key)
        if loaded is not None:
            stored, record = loaded
            found[split, mode] = Cell(
                model=name,
                split=split,
                mode=mode,
                max_turns=record["max_turns"],
                leak_checked=record["leak_checked"],
                episodes=stored.episodes,
                probes=stored.probes,
                skipped_tasks=record["skipped_tasks"],
            )
    return found


def roll_out_cells(
    cfg: Config,
    name: str,
    source: str,
    splits: list[EvalSplit],
    modes: list[str],
    teachers: TeacherPool,
    settings: RolloutSettings,
    keys: dict[tuple[str, str], str],
    todo: set[tuple[str, str]],
) -> None:
    """Roll out the cells in ``todo``, keeping each in the scratch folder as it finishes."""
    from rl2f.engines import make_engine

    scratch = partial_dir(cfg.eval.episodes_dir)
    student = make_engine(cfg.rollout.engine, source, dtype=cfg.model.dtype)
    try:
        for cell in evaluate_model(
            name,
            student,
            splits,
            modes,
            teachers.for_mode,
            settings,
            sycophancy_probe=cfg.eval.sycophancy_probe,
            wanted=lambda split, mode: (split, mode) in todo,
        ):
            record = {
                "key": keys[cell.split, cell.mode],
                "max_turns": cell.max_turns,
                "leak_checked": cell.leak_checked,
                "skipped_tasks": cell.skipped_tasks,
            }
            stored = StoredCell(name, cell.split, cell.mode, cell.episodes, cell.probes)
            save_finished_cell(scratch, stored, record)
            log.info("%s %s %s: cell finished", name, cell.split, cell.mode)
    finally:
        student.close()


def evaluate_one(
    cfg: Config,
    name: str,
    source: str,
    splits: list[EvalSplit],
    modes: list[str],
    teachers: TeacherPool,
    settings: RolloutSettings,
) -> dict[str, Any]:
    """Roll out, store and score every cell of one model inside its own MLflow child run.

    Cells a killed run finished (under the same settings) are reused, not rolled out again; all
    cells are read back from the scratch folder, so a resumed run stores and scores exactly what
    an uninterrupted one does.
    """
    from rl2f.evaluation.mlflow_log import log_cell_metrics, log_episode_table, log_traces

    scratch = partial_dir(cfg.eval.episodes_dir)
    keys = {(s.name, mode): cell_key(cfg, source, s, mode) for s in splits for mode in modes}
    results: dict[str, Any] = {}
    with stage_run(cfg, f"evaluate/{name}", sections=SECTIONS) as run:
        if run:
            run.set_tags({"rl2f.model": name, "rl2f.model_source": source})
        log.info("evaluating %s (%s)", name, source)
        todo = set(keys) - set(finished_cells(scratch, name, keys))
        if len(todo) < len(keys):
            log.info(
                "%s: reusing %d finished cell(s) of %d", name, len(keys) - len(todo), len(keys)
            )
        if todo:
            roll_out_cells(cfg, name, source, splits, modes, teachers, settings, keys, todo)
        found = finished_cells(scratch, name, keys)
        cells = [found[key] for key in keys if key in found]  # splits x modes order
        publish_model(
            cfg.eval.episodes_dir,
            name,
            [StoredCell(name, c.split, c.mode, c.episodes, c.probes) for c in cells],
        )
        for cell in cells:
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
    fix_cpu_threads(cfg.model.cpu_threads)
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
    shutil.rmtree(partial_dir(cfg.eval.episodes_dir), ignore_errors=True)  # all published
    print(summary_table(metrics))
    log.info("wrote %s and plot data under %s", metrics_path, cfg.eval.plots_dir)
    return metrics
