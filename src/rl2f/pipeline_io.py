"""Runs one stage inside a Kubeflow task.

A Kubeflow task gets its inputs as artifact paths chosen by the backend, while every stage reads
and writes the fixed relative paths of DESIGN.md (data/tasks, models/base, ...). This bridge
builds a scratch workspace where the input artifacts appear at those relative paths, runs the
stage there exactly as ``rl2f <stage>`` would, and copies the stage's outputs into the output
artifacts. So a stage behaves the same under DVC and under Kubeflow, and components stay a
two-line call.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

from rl2f.errors import UserError

log = logging.getLogger(__name__)

# Stages that train and should use every GPU the task was given.
TRAINING_STAGES = frozenset({"bootstrap", "train_rl2f", "train_single_turn", "distill"})


def _link_input(artifact_path: str, target: Path) -> None:
    source = Path(artifact_path)
    if not source.exists():
        raise FileNotFoundError(f"input artifact {artifact_path} does not exist")
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_symlink():  # left by an earlier attempt in a durable workspace
        target.unlink()
    # Symlinks avoid copying checkpoints; stages only read their inputs.
    target.symlink_to(source.resolve(), target_is_directory=source.is_dir())


def _copy_output(source: Path, artifact_path: str) -> None:
    if not source.exists():
        raise FileNotFoundError(f"stage did not write {source}")
    destination = Path(artifact_path)
    destination.parent.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        shutil.copytree(source, destination, dirs_exist_ok=True)
    else:
        shutil.copy2(source, destination)


def stage_command(stage: str, params: Path, overrides: list[str]) -> list[str]:
    command = [sys.executable, "-m", "rl2f.cli", stage, "--params", str(params)]
    for override in overrides:
        command += ["-S", override]
    gpus = _gpu_count()
    if stage in TRAINING_STAGES and gpus > 1:
        accelerate = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes"]
        command = [*accelerate, str(gpus), "-m", "rl2f.cli", *command[3:]]
    return command


def _gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except ImportError:
        return 0


# Where training stages keep their workspace (and so their checkpoints) across retries: a
# directory on durable storage, such as the model-cache PVC the training steps mount
# (pipelines/placement.py sets it). Unset, each attempt works in a temporary directory.
WORK_ROOT_ENV = "RL2F_WORK_ROOT"
# The CLI's exit status for a config or user error (rl2f.cli): not transient, retrying won't help.
USER_ERROR_EXIT = 2


def workspace_key(
    stage: str, params_yaml: str, overrides: list[str], inputs: Mapping[str, str]
) -> str:
    """What decides a stage's result: its params, overrides and input artifacts (artifacts are
    immutable, so their paths stand for their content). A retry of a task, or a rerun with the
    same inputs, gets the same key; anything else gets a fresh workspace."""
    decided = {"stage": stage, "params": params_yaml, "overrides": overrides, "inputs": inputs}
    return hashlib.sha256(json.dumps(decided, sort_keys=True).encode()).hexdigest()[:20]


def durable_workspace(
    stage: str, params_yaml: str, overrides: list[str], inputs: Mapping[str, str]
) -> Path | None:
    """The workspace a training stage resumes in, or None: no durable root configured, a stage
    that does not checkpoint, or the root's volume not mounted (the root's parent is the mount
    point; kfp.local passes the cluster's environment to tasks that have no such volume)."""
    root = os.environ.get(WORK_ROOT_ENV)
    if not root or stage not in TRAINING_STAGES:
        return None
    if not Path(root).parent.is_dir():
        log.warning(
            "%s=%s: %s is not mounted; checkpoints are temporary",
            WORK_ROOT_ENV,
            root,
            Path(root).parent,
        )
        return None
    return Path(root) / f"{stage}-{workspace_key(stage, params_yaml, overrides, inputs)}"


@contextlib.contextmanager
def _workspace(durable: Path | None, stage: str) -> Iterator[Path]:
    if durable is None:
        with tempfile.TemporaryDirectory(prefix=f"rl2f-{stage}-") as tmp:
            yield Path(tmp)
        return
    resumed = durable.exists()
    durable.mkdir(parents=True, exist_ok=True)
    log.info("%s workspace %s (%s)", stage, durable, "resuming" if resumed else "new")
    yield durable  # left in place when the stage fails: the retry resumes from its checkpoints
    shutil.rmtree(durable, ignore_errors=True)


def run_stage(
    stage: str,
    params_yaml: str,
    overrides: list[str] | None = None,
    inputs: Mapping[str, str] | None = None,
    outputs: Mapping[str, str] | None = None,
    optional_outputs: frozenset[str] = frozenset(),
) -> dict:
    """Run ``stage`` with the given params text in a scratch workspace.

    ``inputs`` and ``outputs`` map workspace-relative paths (``data/tasks``) to artifact paths.
    An output in ``optional_outputs`` that the stage did not write becomes an empty artifact
    (bootstrap writes no model when a real one is named).
    Training stages work in a durable workspace when ``RL2F_WORK_ROOT`` is set, so a retried
    task resumes from the last checkpoint instead of step 0.
    Returns the stage's JSON summary when it wrote ``reports/<stage>.summary.json``.
    """
    overrides = list(overrides or [])
    inputs = dict(inputs or {})
    # A bad config fails here, in a second, before any input is touched or model loaded. (KFP
    # 2.17 retries a failed task whatever its exit status; a config error's retries fail as fast.)
    _load_params_text(params_yaml, overrides)
    durable = durable_workspace(stage, params_yaml, overrides, inputs)
    with _workspace(durable, stage) as workspace:
        params = workspace / "params.yaml"
        params.write_text(params_yaml)
        for relative, artifact in inputs.items():
            _link_input(artifact, workspace / relative)
        command = stage_command(stage, params, overrides)
        log.info("running %s in %s", " ".join(command), workspace)
        result = subprocess.run(command, cwd=workspace, env=dict(os.environ))
        if result.returncode == USER_ERROR_EXIT:
            raise UserError(f"rl2f {stage}: configuration or input error (see the log above)")
        result.check_returncode()
        for relative, artifact in (outputs or {}).items():
            if relative in optional_outputs and not (workspace / relative).exists():
                Path(artifact).mkdir(parents=True, exist_ok=True)
                continue
            _copy_output(workspace / relative, artifact)
        summary = workspace / "reports" / f"{stage}.summary.json"
        return json.loads(summary.read_text()) if summary.exists() else {}


def _load_params_text(params_yaml: str, overrides: list[str] | None):
    from rl2f.config import load_config

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "params.yaml"
        path.write_text(params_yaml)
        return load_config(path, list(overrides or []))


def open_parent_run(params_yaml: str, run_key: str) -> str:
    """The parent MLflow run of one Kubeflow run ('' when tracking is off).

    Keyed exactly as the stages key it (:func:`rl2f.tracking.pipeline_key`): by the run id that
    each pod reads from its ``pipeline/runid`` label, or by ``RL2F_PIPELINE_RUN_KEY`` when set
    (``rl2f pipeline run-local`` sets it, as kfp.local pods have no labels)."""
    from rl2f.tracking import KFP_RUN_ENV, find_or_create_parent, pipeline_key

    cfg = _load_params_text(params_yaml, None)
    if not cfg.tracking.enabled:
        return ""
    if not os.environ.get(KFP_RUN_ENV):
        os.environ[KFP_RUN_ENV] = run_key
    return find_or_create_parent(cfg, pipeline_key())


# Kubeflow's final pipeline states -> MLflow run statuses.
KFP_STATE_TO_MLFLOW = {"SUCCEEDED": "FINISHED", "FAILED": "FAILED", "CANCELED": "KILLED"}


def close_parent_run(params_yaml: str, run_key: str, state: str) -> str:
    """Set the parent MLflow run's status from the pipeline's final ``state``; returns the
    status set ('' when tracking is off or the params never validated: then no parent exists)."""
    from mlflow.tracking import MlflowClient

    from rl2f.tracking import KFP_RUN_ENV, find_or_create_parent, pipeline_key, tracking_uri

    try:
        cfg = _load_params_text(params_yaml, None)
    except Exception as exc:  # noqa: BLE001  (the pipeline already failed on it; report, go on)
        log.warning("params do not validate (%s): no parent run to close", exc)
        return ""
    if not cfg.tracking.enabled:
        return ""
    if not os.environ.get(KFP_RUN_ENV):
        os.environ[KFP_RUN_ENV] = run_key
    parent = find_or_create_parent(cfg, pipeline_key())
    status = KFP_STATE_TO_MLFLOW.get(state.upper().replace("CANCELLED", "CANCELED"), "FAILED")
    client = MlflowClient(tracking_uri(cfg.tracking))
    client.set_tag(parent, "kfp.state", state)
    client.set_terminated(parent, status)
    return status


def publish_metrics(artifact, source: str | None = None, model: str | None = None) -> None:  # noqa: ANN001
    """Log the numeric leaves of a JSON metrics file on a KFP Metrics artifact.

    The file is also left at ``artifact.path``: under kfp.local, log_metric writes nothing, and a
    task whose Metrics output has no file is never a cache hit.
    """
    path = Path(source or artifact.path)
    tree = json.loads(path.read_text())
    if model is not None:
        tree = {model: tree.get(model, tree)}
    for name, value in _numeric_leaves(tree):
        artifact.log_metric(name, value)
    if source:
        Path(artifact.path).parent.mkdir(parents=True, exist_ok=True)
        Path(artifact.path).write_text(json.dumps(tree, indent=2))


def publish_comparisons(artifact) -> None:  # noqa: ANN001
    """Log the paired differences of comparisons.json (left at ``artifact.path``) at turn 1 and
    at each split's last turn as scalars, so the Kubeflow run view shows whether each gap is
    resolved (its interval excludes 0) without opening the file."""
    rows = json.loads(Path(artifact.path).read_text())
    last: dict[str, int] = {}
    for row in rows:
        last[row["split"]] = max(last.get(row["split"], 1), row["turn"])
    for row in rows:
        if row["turn"] not in (1, last[row["split"]]):
            continue
        a, b = row["a"], row["b"]
        name = f"{row['split']}.{a['model']}.{a['mode']}-{b['model']}.{b['mode']}.turn{row['turn']}"
        artifact.log_metric(f"{name}.diff", float(row["diff"]))
        artifact.log_metric(f"{name}.lo", float(row["ci95"][0]))
        artifact.log_metric(f"{name}.hi", float(row["ci95"][1]))


def _numeric_leaves(tree: object, prefix: str = "") -> list[tuple[str, float]]:
    if isinstance(tree, bool):
        return [(prefix.rstrip("."), float(tree))]
    if isinstance(tree, int | float):
        return [(prefix.rstrip("."), float(tree))]
    if isinstance(tree, Mapping):
        return [leaf for k, v in tree.items() for leaf in _numeric_leaves(v, f"{prefix}{k}.")]
    if isinstance(tree, list) and tree and all(isinstance(v, int | float) for v in tree):
        # Per-turn curves: keep the first and last turn as scalars for the run list.
        return [(f"{prefix}first", float(tree[0])), (f"{prefix}last", float(tree[-1]))]
    return []


# Where each evaluated model lives in a workspace (the stages' default paths).
MODEL_DIRS = {
    "base": "models/base",
    "single_turn": "models/single_turn",
    "rl2f": "models/rl2f",
    "rl2f_critic": "models/rl2f_critic",
}
EVAL_OUTPUTS = ("reports/metrics.json", "reports/plots", "data/episodes/eval")


def evaluate_one_model(
    model_name: str,
    params_yaml: str,
    overrides: list[str],
    tasks_path: str,
    model_path: str,
    results_path: str,
) -> None:
    """Evaluate one model (a built-in, or an extra model such as the answers-only ablation) in
    its own task; every other model has its own task too, so only this one runs here."""
    if model_name in MODEL_DIRS:
        model_dir = MODEL_DIRS[model_name]
        only_this = [f"eval.models=[{model_name}]", "eval.extra_models={}"]
    else:
        # It stays an extra model, now found at its input artifact, so that
        # eval.extra_model_modes still decides its feedback modes.
        model_dir = f"models/{model_name}"
        only_this = ["eval.models=[]", f"eval.extra_models={{{model_name}: {model_dir}}}"]
    run_stage(
        "evaluate",
        params_yaml,
        [*overrides, *only_this],
        inputs={"data/tasks": tasks_path, model_dir: model_path},
        outputs={relative: f"{results_path}/{relative}" for relative in EVAL_OUTPUTS},
    )


def red_team_leaks(
    params_yaml: str, overrides: list[str], tasks_path: str, base_model_path: str, leaks_path: str
) -> None:
    """Run the red_team stage on the prepared tasks with the base model's tokenizer (an empty
    artifact when ``model.student`` names a hub model, which the stage then reads instead)."""
    leaks_file = _load_params_text(params_yaml, overrides).eval.red_team_path
    run_stage(
        "red_team",
        params_yaml,
        overrides,
        inputs={"data/tasks": tasks_path, MODEL_DIRS["base"]: base_model_path},
        outputs={leaks_file: leaks_path},
    )


def merge_results(result_dirs: list[str], workspace: Path) -> None:
    """Combine per-model evaluation outputs into one workspace, as a single `evaluate` would."""
    import pandas as pd

    metrics: dict = {}
    for result in map(Path, result_dirs):
        metrics.update(json.loads((result / "reports/metrics.json").read_text()))
        for relative in ("reports/plots", "data/episodes/eval"):
            for file in (result / relative).rglob("*"):
                if not file.is_file():
                    continue
                target = workspace / relative / file.relative_to(result / relative)
                target.parent.mkdir(parents=True, exist_ok=True)
                if target.exists() and file.suffix == ".csv":
                    merged = pd.concat([pd.read_csv(target), pd.read_csv(file)])
                    merged.to_csv(target, index=False)
                else:
                    shutil.copy2(file, target)
    (workspace / "reports").mkdir(parents=True, exist_ok=True)
    (workspace / "reports/metrics.json").write_text(json.dumps(metrics, indent=2))


def merge_and_report(
    params_yaml: str,
    overrides: list[str],
    result_dirs: list[str],
    *,
    red_team_leaks: str,
    html: str,
    markdown: str,
    metrics_json: str,
    comparisons_json: str,
) -> None:
    """Merge the per-model evaluation results and run the report stage on them (with the
    red_team stage's leak rates); the report stage is the one place that sees every model's
    episodes, so it also writes the paired comparisons (at ``eval.comparisons_path`` in the
    workspace)."""
    eval_cfg = _load_params_text(params_yaml, overrides).eval
    comparisons_path = eval_cfg.comparisons_path
    with tempfile.TemporaryDirectory(prefix="rl2f-merge-") as tmp:
        merged = Path(tmp)
        merge_results(result_dirs, merged)
        inputs = {relative: str(merged / relative) for relative in EVAL_OUTPUTS}
        inputs[eval_cfg.red_team_path] = red_team_leaks
        run_stage(
            "report",
            params_yaml,
            overrides,
            inputs=inputs,
            outputs={
                "reports/report.html": html,
                "reports/report.md": markdown,
                "reports/metrics.json": metrics_json,
                comparisons_path: comparisons_json,
            },
        )
    cfg = _load_params_text(params_yaml, overrides)
    if cfg.tracking.enabled:
        from rl2f.tracking import promote_champion

        promote_champion(cfg, json.loads(Path(metrics_json).read_text()))


def compose_params_yaml(
    params_yaml: str,
    *,
    student_model: str,
    train_steps: int,
    max_turns: int,
    teacher_kind: str,
    eval_max_tasks: int,
    extra_overrides: list[str],
) -> str:
    """params.yaml text with the pipeline's parameters applied, validated, as YAML text.
    ``eval_max_tasks`` 0 means the whole split (a UI form field cannot hold null)."""
    import yaml

    overrides = [
        f"train.steps={train_steps}",
        f"train.max_turns={max_turns}",
        f"teacher.kind={teacher_kind}",
        f"eval.max_tasks={eval_max_tasks or 'null'}",
        *extra_overrides,
    ]
    if student_model:
        overrides.append(f"model.student={student_model}")
    cfg = _load_params_text(params_yaml, overrides)
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
