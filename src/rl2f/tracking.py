"""MLflow conventions: one parent run per pipeline run, one child run per stage.

Stages run as separate processes (DVC) or separate pods (Kubeflow), so the parent cannot be an
active run shared in memory. The parent is found again by a key tag: the Kubeflow run id (each
pod reads it from its ``pipeline/runid`` label as ``KFP_RUN_ID``; passing the parent's id as a
task input instead would defeat Kubeflow's cache), the DVC experiment name, or a hash of the git
commit and params.yaml — the stages of one ``dvc repro`` share the commit and params, so they
land under one parent. ``RL2F_PARENT_RUN_ID`` names a parent outright.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from rl2f.config import Config, TrackingConfig

log = logging.getLogger(__name__)

PARENT_RUN_ENV = "RL2F_PARENT_RUN_ID"
PIPELINE_KEY_ENV = "RL2F_PIPELINE_RUN_KEY"
KFP_RUN_ENV = "KFP_RUN_ID"
DVC_EXP_ENV = "DVC_EXP_NAME"

TAG_ROLE = "rl2f.role"
TAG_KEY = "rl2f.pipeline_key"
TAG_STAGE = "rl2f.stage"


def git_commit(cwd: str | os.PathLike[str] = ".") -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def pipeline_key(params_path: str | os.PathLike[str] = "params.yaml") -> str:
    """Identifies one pipeline run across the processes of its stages."""
    for env in (PIPELINE_KEY_ENV, KFP_RUN_ENV, DVC_EXP_ENV):
        if os.environ.get(env):
            return f"{env.lower()}:{os.environ[env]}"
    digest = hashlib.sha256((git_commit() or "no-git").encode())
    params = Path(params_path)
    if params.exists():
        digest.update(params.read_bytes())
    return f"repro:{digest.hexdigest()[:16]}"


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"train": {"steps": 3}} -> {"train.steps": 3}; lists are kept as their string form."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _mlflow(cfg: TrackingConfig):  # noqa: ANN202  (the module)
    # Traces are exported synchronously: stages attach the reward to each trace right after
    # writing it, which fails while the trace still sits in the async export queue.
    os.environ.setdefault("MLFLOW_ENABLE_ASYNC_TRACE_LOGGING", "false")
    import mlflow

    uri = tracking_uri(cfg)
    # set_tracking_uri also exports MLFLOW_TRACKING_URI to the environment; left there, it
    # would outrank the params of the next stage run in this process. Keep the user's value.
    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before
    if mlflow.get_experiment_by_name(cfg.experiment) is None:
        location = cfg.artifact_location or _default_artifact_location(uri)
        mlflow.create_experiment(cfg.experiment, artifact_location=location)
    mlflow.set_experiment(cfg.experiment)
    return mlflow


def is_main_process() -> bool:
    """Rank 0 of a distributed launch (torchrun and ``accelerate launch`` set RANK), or a plain
    process. Read from the environment so that tracking never has to import accelerate."""
    return int(os.environ.get("RANK", "0")) == 0


def tracking_uri(cfg: TrackingConfig) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or cfg.tracking_uri


def _default_artifact_location(uri: str) -> str | None:
    """A SQLite store keeps its artifacts in ``mlartifacts/`` beside the database file; a server
    chooses its own (its --artifacts-destination)."""
    if not uri.startswith("sqlite:///"):
        return None
    database = Path(uri.removeprefix("sqlite:///"))
    return (database.resolve().parent / "mlartifacts").as_uri()


def find_or_create_parent(cfg: Config, key: str) -> str:
    mlflow = _mlflow(cfg.tracking)
    explicit = os.environ.get(PARENT_RUN_ENV)
    if explicit:
        return explicit
    found = mlflow.search_runs(
        filter_string=f"tags.`{TAG_KEY}` = '{key}' and tags.`{TAG_ROLE}` = 'parent'",
        max_results=1,
        output_format="list",
    )
    if found:
        return found[0].info.run_id
    tags = base_tags() | {TAG_KEY: key, TAG_ROLE: "parent"}
    with mlflow.start_run(run_name=f"pipeline {key.split(':', 1)[-1][:12]}", tags=tags) as run:
        mlflow.log_params(_loggable(flatten(cfg.model_dump(mode="json"))))
    return run.info.run_id


def base_tags() -> dict[str, str]:
    tags = {"mlflow.source.git.commit": git_commit() or "unknown"}
    if os.environ.get(DVC_EXP_ENV):
        tags["dvc.exp_name"] = os.environ[DVC_EXP_ENV]
    if os.environ.get(KFP_RUN_ENV):
        tags["kfp.run_id"] = os.environ[KFP_RUN_ENV]
    return tags


def _loggable(params: Mapping[str, Any]) -> dict[str, str]:
    # MLflow caps a param value at 6000 characters; long prompt templates are cut, not dropped.
    return {k: str(v)[:6000] for k, v in params.items()}


@contextlib.contextmanager
def stage_run(cfg: Config, stage: str, sections: tuple[str, ...] = ()) -> Iterator[Any]:
    """Open the child run of ``stage`` under this pipeline run's parent.

    Yields the ``mlflow`` module with the child run active, or None when tracking is disabled,
    so stage code reads ``if run: run.log_metric(...)`` and never needs a second code path.
    Under torchrun or ``accelerate launch`` only rank 0 opens the run: the other ranks get None,
    so one training stage on N processes is one MLflow run, not N.
    """
    if not cfg.tracking.enabled or not is_main_process():
        yield None
        return
    parent_id = find_or_create_parent(cfg, pipeline_key())
    mlflow = _mlflow(cfg.tracking)
    tags = base_tags() | {TAG_STAGE: stage, TAG_ROLE: "stage"}
    with mlflow.start_run(run_name=stage, parent_run_id=parent_id, tags=tags):
        dumped = cfg.model_dump(mode="json")
        params = {s: dumped[s] for s in sections if s in dumped}
        if params:
            mlflow.log_params(_loggable(flatten(params)))
        yield mlflow
    log.info("MLflow: stage %s logged under parent run %s", stage, parent_id)


def log_metrics_by_turn(mlflow: Any, name: str, values: list[float]) -> None:
    """One metric per turn with ``step=turn`` so the MLflow UI draws it as a curve."""
    for turn, value in enumerate(values, start=1):
        mlflow.log_metric(name, float(value), step=turn)


def active() -> Any:
    """The mlflow module when a stage run is active (tracking on), else None."""
    import mlflow

    return mlflow if mlflow.active_run() is not None else None


def log_summary(mlflow: Any, summary: Mapping[str, Any]) -> None:
    """A stage's returned summary: as a JSON artifact, and its numeric leaves as metrics."""
    mlflow.log_dict(dict(summary), "summary.json")
    metrics = {
        key: float(value)
        for key, value in flatten(summary).items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }
    if metrics:
        mlflow.log_metrics({k.replace("/", "_"): v for k, v in metrics.items()})


# The one registered model every trained model (rl2f, single_turn, rl2f_critic, ...) becomes a
# version of, tagged with which it is; the alias CHAMPION points at the version that did best in
# the latest pipeline run that compared them (see promote_champion).
REGISTERED_MODEL = "rl2f-student"
CHAMPION = "champion"
TAG_MODEL = "rl2f.model"


def _model_requirements() -> list[str]:
    """Pinned requirements of a logged model, given rather than inferred (inference loads the
    model in a subprocess, which costs more than the training of a tiny model)."""
    from importlib.metadata import version

    return [
        f"{name}=={version(name).split('+')[0]}"
        for name in ("torch", "transformers", "tokenizers", "accelerate")
    ]


def log_model(
    mlflow: Any, model_dir: str | os.PathLike[str], model_name: str, datasets: Mapping[str, Path]
) -> str | None:
    """Log a saved model with MLflow's transformers flavour, register it as a version of
    :data:`REGISTERED_MODEL` and record the datasets it was trained on as run inputs
    (``{context: parquet path}``). Returns the registered version ('' if the store has no
    registry)."""
    import pandas as pd

    for context, path in datasets.items():
        frame = pd.read_parquet(path)
        dataset = mlflow.data.from_pandas(frame, source=str(path), name=Path(path).stem)
        mlflow.log_input(dataset, context=context)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # Loaded rather than passed as a path: MLflow 3.17's local-checkpoint path fails on
    # transformers 5 (it expects the pipeline class where transformers 5 has its name).
    components = {
        "model": AutoModelForCausalLM.from_pretrained(model_dir, dtype="auto"),
        "tokenizer": AutoTokenizer.from_pretrained(model_dir),
    }
    info = mlflow.transformers.log_model(
        transformers_model=components,
        name="model",
        task="text-generation",
        pip_requirements=_model_requirements(),
    )
    try:
        registered = mlflow.register_model(info.model_uri, REGISTERED_MODEL)
    except Exception as exc:  # noqa: BLE001  (a store without a model registry)
        log.warning("model %s logged but not registered: %s", model_name, exc)
        return None
    client = mlflow.MlflowClient()
    client.set_model_version_tag(REGISTERED_MODEL, registered.version, TAG_MODEL, model_name)
    client.set_model_version_tag(REGISTERED_MODEL, registered.version, TAG_KEY, pipeline_key())
    return registered.version


def promote_champion(
    cfg: Config, metrics: Mapping[str, Any], split: str = "eval_id", mode: str = "teacher"
) -> str | None:
    """Point the :data:`CHAMPION` alias at this pipeline run's registered model with the best
    last-turn accuracy on ``split`` under ``mode`` feedback. Returns the version, or None when
    none of the evaluated models was registered by this run."""
    mlflow = _mlflow(cfg.tracking)
    client = mlflow.MlflowClient()
    key = pipeline_key()
    versions = {
        v.tags.get(TAG_MODEL): v
        for v in sorted(
            client.search_model_versions(f"name='{REGISTERED_MODEL}'"), key=lambda v: int(v.version)
        )
        if v.tags.get(TAG_KEY) == key
    }
    scored = [
        (curve[-1], name)
        for name, splits in metrics.items()
        if name in versions and (curve := splits.get(split, {}).get(mode, {}).get("acc_by_turn"))
    ]
    if not scored:
        return None
    _, best = max(scored)
    version = versions[best].version
    client.set_registered_model_alias(REGISTERED_MODEL, CHAMPION, version)
    log.info("MLflow: %s v%s (%s) is now %s", REGISTERED_MODEL, version, best, CHAMPION)
    return version
