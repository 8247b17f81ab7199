"""The Kubeflow pipeline: the committed YAML is current and strictly valid, and it runs end to end
under kfp.local on the ci profile (the same file users upload)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
COMPILED = REPO / "pipelines" / "rl2f.yaml"


def _rl2f(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rl2f.cli", *args],
        cwd=cwd,
        env=os.environ | (env or {}),
        capture_output=True,
        text=True,
        timeout=1800,
    )


def test_committed_pipeline_is_up_to_date(tmp_path: Path) -> None:
    fresh = tmp_path / "rl2f.yaml"
    result = subprocess.run(
        [sys.executable, "-m", "rl2f.cli", "pipeline", "compile", "--output", str(fresh)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "RL2F_IMAGE"},
    )
    assert result.returncode == 0, result.stderr
    assert fresh.read_text() == COMPILED.read_text(), (
        "pipelines/rl2f.yaml is out of date: run `rl2f pipeline compile` and commit it"
    )


def test_compiled_pipeline_parses_into_kfp_protos() -> None:
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2

    pipeline, platform = yaml.safe_load_all(COMPILED.read_text())
    spec = json_format.ParseDict(pipeline, pipeline_spec_pb2.PipelineSpec())  # rejects unknown keys
    json_format.ParseDict(platform, pipeline_spec_pb2.PlatformSpec())
    tasks = spec.root.dag.tasks
    for stage in ("prepare", "validate", "bootstrap", "rollout", "distill", "report"):
        assert stage in tasks
    evaluations = [name for name in tasks if name.startswith("evaluate")]
    assert len(evaluations) == 5  # one per model (the answers-only ablation too), in parallel
    distills = [name for name in tasks if name.startswith("distill")]
    assert len(distills) == 2  # the critic and the answers-only ablation
    executors = spec.deployment_spec["executors"]
    images = {e["container"]["image"] for e in executors.values()}
    assert len(images) == 1  # every step runs in the project image
    assert all("pip install" not in " ".join(e["container"]["command"]) for e in executors.values())
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert all("pvcMount" in e and "secretAsEnv" in e for e in k8s.values())


@pytest.mark.slow
def test_compiled_pipeline_runs_under_kfp_local(tmp_path: Path) -> None:
    for name in ("params.yaml", "profiles"):
        source = REPO / name
        target = tmp_path / name
        if source.is_dir():
            subprocess.run(["cp", "-r", str(source), str(target)], check=True)
        else:
            target.write_text(source.read_text())
    (tmp_path / "pipelines").mkdir()
    (tmp_path / "pipelines" / "rl2f.yaml").write_text(COMPILED.read_text())
    result = _rl2f(
        "pipeline",
        "run-local",
        "--profile",
        "ci",
        "--pipeline-root",
        "kfp-root",
        cwd=tmp_path,
        env={"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"},
    )
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert result.returncode == 0, "\n".join(errors[-20:]) + result.stderr[-3000:]
    root = tmp_path / "kfp-root"
    reports = list(root.rglob("html"))
    assert reports and reports[0].stat().st_size > 1000
    metrics = [p for p in root.rglob("metrics") if p.is_file()]
    merged = [json.loads(p.read_text()) for p in metrics]
    assert any({"base", "rl2f"} <= set(m) for m in merged)
    # The ablation is evaluated by its own task in self mode only, and merged into the report.
    (report,) = [m for m in merged if "rl2f_answers_only" in m and "base" in m]
    assert {mode for split in report["rl2f_answers_only"].values() for mode in split} == {"self"}

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    parents = [r for r in runs if r.data.tags.get("rl2f.role") == "parent"]
    assert len(parents) == 1
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    stages = {r.data.tags.get("rl2f.stage") for r in children}
    assert {"prepare", "train_rl2f", "train_single_turn", "distill"} <= stages


def test_pipeline_form_zero_eval_tasks_means_the_whole_split() -> None:
    """The Kubeflow form cannot hold null: eval_max_tasks 0 is the whole split, and the
    composed params still validate (0 itself is not a valid cap)."""
    import yaml

    from rl2f.pipeline_io import compose_params_yaml

    def composed(eval_max_tasks: int) -> dict:
        text = compose_params_yaml(
            (REPO / "params.yaml").read_text(),
            student_model="",
            train_steps=3,
            max_turns=2,
            teacher_kind="oracle",
            eval_max_tasks=eval_max_tasks,
            extra_overrides=[],
        )
        return yaml.safe_load(text)

    assert composed(0)["eval"]["max_tasks"] is None
    assert composed(7)["eval"]["max_tasks"] == 7
