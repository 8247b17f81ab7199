"""``rl2f pipeline compile | run-local | submit``.

The DAG itself lives in ``pipelines/`` at the repository root (with the components in
``components/``), next to the compiled ``pipelines/rl2f.yaml`` that users upload in the Kubeflow
UI. The same compiled file runs locally under ``kfp.local`` so what is tested is what is shipped.
"""

from __future__ import annotations

import logging
import os
import sys
import uuid
from pathlib import Path
from typing import Any

import yaml

from rl2f.config import Config
from rl2f.errors import UserError
from rl2f.tracking import PIPELINE_KEY_ENV

log = logging.getLogger(__name__)

COMPILED = Path("pipelines/rl2f.yaml")


def _import_pipeline(repo: Path):  # noqa: ANN202
    if not (repo / "pipelines" / "rl2f_pipeline.py").exists():
        raise UserError(
            f"{repo}: no pipelines/rl2f_pipeline.py here (run from the repository root)"
        )
    sys.path.insert(0, str(repo))
    try:
        from pipelines.rl2f_pipeline import rl2f_pipeline
    finally:
        sys.path.remove(str(repo))
    return rl2f_pipeline


def compile_pipeline(repo: Path = Path("."), output: Path | None = None) -> Path:
    from kfp import compiler

    output = output or repo / COMPILED
    compiler.Compiler().compile(_import_pipeline(repo.resolve()), str(output))
    log.info("compiled %s", output)
    return output


def pipeline_arguments(cfg: Config) -> dict[str, Any]:
    """Pipeline parameters for a run of ``cfg`` (the UI's fields, filled from one config)."""
    return {
        "params_yaml": yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False),
        "student_model": cfg.model.student or "",
        "train_steps": cfg.train.steps,
        "max_turns": cfg.train.max_turns,
        "teacher_kind": cfg.teacher.kind,
        "eval_max_tasks": cfg.eval.max_tasks or 0,
        "extra_overrides": [],
    }


def run_local(
    cfg: Config, compiled: Path = COMPILED, pipeline_root: Path | None = None, cache: bool = True
) -> Path:
    """Run the compiled pipeline in this environment with kfp.local's subprocess runner.

    With ``cache`` (as on a cluster) a task whose inputs match an earlier run's under the same
    ``pipeline_root`` is not run again (kfp.local keeps its cache in ``<root>/.kfp_cache``).
    """
    from kfp import components, local

    if not compiled.exists():
        raise UserError(f"{compiled}: not found (run `rl2f pipeline compile`)")
    root = (pipeline_root or Path("kfp-local")).resolve()
    uri = os.environ.get("MLFLOW_TRACKING_URI") or cfg.tracking.tracking_uri
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_absolute():
        # Each task runs in its own scratch directory; pin the store to this one.
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{Path(uri[10:]).resolve()}"
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(root),
        enable_caching=cache,
    )
    pipeline = components.load_component_from_file(str(compiled))
    # kfp.local tasks carry no pod labels (the cluster's source of the run id): key this run's
    # MLflow parent for start_tracking and every stage alike (rl2f.tracking.pipeline_key).
    user_key = os.environ.get(PIPELINE_KEY_ENV)
    os.environ[PIPELINE_KEY_ENV] = user_key or f"kfp-local-{uuid.uuid4().hex[:12]}"
    try:
        pipeline(**pipeline_arguments(cfg))
    finally:
        if user_key is None:
            os.environ.pop(PIPELINE_KEY_ENV, None)
    log.info("kfp.local run finished; artifacts under %s", root)
    return root


def submit(
    cfg: Config,
    host: str,
    compiled: Path = COMPILED,
    namespace: str | None = None,
    experiment: str = "rl2f",
    run_name: str | None = None,
    cron: str | None = None,
) -> str:
    """Submit the compiled pipeline to a Kubeflow Pipelines endpoint; returns the run id."""
    import kfp

    if not compiled.exists():
        raise UserError(f"{compiled}: not found (run `rl2f pipeline compile`)")
    try:
        client = kfp.Client(host=host, namespace=namespace)
        if cron:
            # KFP's cron has six fields, seconds first.
            if len(cron.split()) != 6:
                raise UserError(f"--cron {cron!r}: Kubeflow expects 6 fields (seconds first)")
            exp = client.create_experiment(experiment, namespace=namespace)
            job = client.create_recurring_run(
                experiment_id=exp.experiment_id,
                job_name=run_name or "rl2f-recurring",
                cron_expression=cron,
                pipeline_package_path=str(compiled),
                params=pipeline_arguments(cfg),
            )
            return job.recurring_run_id
        run = client.create_run_from_pipeline_package(
            str(compiled),
            arguments=pipeline_arguments(cfg),
            run_name=run_name,
            experiment_name=experiment,
            namespace=namespace,
        )
        return run.run_id
    except UserError:
        raise
    except Exception as exc:  # connection refused, auth, 4xx from the API server
        raise UserError(
            f"Kubeflow at {host}: {type(exc).__name__}: {exc}".splitlines()[0]
        ) from None
