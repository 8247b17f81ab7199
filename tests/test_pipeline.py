"""The Kubeflow pipeline: the committed YAML is current and strictly valid, and it runs end to end
under kfp.local on the ci profile (the same file users upload)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
COMPILED = REPO / "pipelines" / "rl2f.yaml"
# Environment variables read at compile time (components/stages.py, pipelines/placement.py).
COMPILE_SETTINGS = {"RL2F_IMAGE", "RL2F_CPU_IMAGE", "RL2F_MODEL_CACHE_PVC"}
# The steps that load models: the GPU image and the model cache are theirs alone.
MODEL_STEPS = ("bootstrap", "train", "rollout", "distill", "evaluate")


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
        env={k: v for k, v in os.environ.items() if k not in COMPILE_SETTINGS},
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
    # Every stage runs inside the exit handler, whose exit task records the outcome in MLflow.
    assert set(spec.root.dag.tasks) == {"exit-handler-1", "finish-tracking"}
    finish = spec.root.dag.tasks["finish-tracking"]
    assert finish.inputs.parameters["status"].task_final_status.producer_task == "exit-handler-1"
    tasks = spec.components["comp-exit-handler-1"].dag.tasks
    for stage in ("prepare", "validate", "bootstrap", "rollout", "distill", "report"):
        assert stage in tasks
    evaluations = [name for name in tasks if name.startswith("evaluate")]
    assert len(evaluations) == 5  # one per model (the answers-only ablation too), in parallel
    distills = [name for name in tasks if name.startswith("distill")]
    assert len(distills) == 2  # the critic and the answers-only ablation
    executors = pipeline["deploymentSpec"]["executors"]
    assert all("pip install" not in " ".join(e["container"]["command"]) for e in executors.values())
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert set(k8s) == set(executors)
    for name, executor in executors.items():
        loads_models = re.sub(r"-\d+$", "", name.removeprefix("exec-")) in MODEL_STEPS
        image = executor["container"]["image"]
        # GPU image (CUDA, vLLM) for model steps; the slim CPU image for the rest.
        expected = "ghcr.io/rl2f/rl2f:0.1.0" if loads_models else "ghcr.io/rl2f/rl2f-cpu:0.1.0"
        assert image == expected, name
        # The model cache only where models are loaded: a CPU step never waits for the volume.
        assert ("pvcMount" in k8s[name]) == loads_models, name
        assert "secretAsEnv" in k8s[name]
        assert k8s[name]["securityContext"]["runAsNonRoot"] is True, name
        env = {e["name"]: e["value"] for e in executor["container"].get("env", [])}
        if loads_models:
            (mount,) = k8s[name]["pvcMount"]
            assert env["HF_HOME"].startswith(mount["mountPath"] + "/")
            assert env["RL2F_WORK_ROOT"].startswith(mount["mountPath"] + "/")
    # A config error is not transient: compose_params is not retried.
    assert not tasks["compose-params"].HasField("retry_policy")
    assert tasks["train"].retry_policy.max_retry_count > 0


def _container_tasks() -> dict:
    """Every task that runs a container, from the root DAG and the exit handler's sub-DAG."""
    pipeline, _ = yaml.safe_load_all(COMPILED.read_text())
    dags = [pipeline["root"]["dag"]] + [
        c["dag"] for c in pipeline["components"].values() if "dag" in c
    ]
    return {
        name: task
        for dag in dags
        for name, task in dag["tasks"].items()
        if "dag" not in pipeline["components"][task["componentRef"]["name"]]
    }


def test_cached_tasks_take_no_per_run_inputs() -> None:
    """A task's inputs make up its cache key: a value that changes every run among them (the
    run id, the parent MLflow run's id from the uncached start_tracking) means the cache never
    hits. Only start_tracking is uncached, and nothing cached reads a per-run value."""
    tasks = _container_tasks()
    uncached = {n for n, t in tasks.items() if not t.get("cachingOptions", {}).get("enableCache")}
    assert uncached == {"start-tracking", "finish-tracking"}
    for name, task in tasks.items():
        if name in uncached:
            continue
        inputs = task.get("inputs", {})
        for key, value in {**inputs.get("parameters", {}), **inputs.get("artifacts", {})}.items():
            producer = value.get("taskOutputParameter", {}).get("producerTask") or value.get(
                "taskOutputArtifact", {}
            ).get("producerTask")
            assert producer not in uncached, f"{name}.{key} reads {producer}'s per-run output"
            assert "{{$" not in json.dumps(value), f"{name}.{key} is a runtime placeholder"
    # The stages still start after the parent run exists (ordering only, not an input).
    assert "start-tracking" in tasks["prepare"]["dependentTasks"]
    # ... and find it by the run id their pods carry.
    _, platform = yaml.safe_load_all(COMPILED.read_text())
    for name, executor in platform["platforms"]["kubernetes"]["deploymentSpec"][
        "executors"
    ].items():
        fields = {f["name"]: f["fieldPath"] for f in executor.get("fieldPathAsEnv", [])}
        assert fields.get("KFP_RUN_ID") == "metadata.labels['pipeline/runid']", name


def test_compiling_twice_gives_identical_task_inputs(tmp_path: Path) -> None:
    from rl2f.kubeflow import compile_pipeline

    first = compile_pipeline(REPO, tmp_path / "a.yaml").read_text()
    second = compile_pipeline(REPO, tmp_path / "b.yaml").read_text()
    assert first == second


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

    def run_local() -> subprocess.CompletedProcess:
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
        return result

    run_local()
    # The same pipeline again: every cached task is a cache hit (none of their inputs changes
    # from run to run); only start_tracking runs, opening the second run's parent.
    again = run_local()
    hits = set(re.findall(r"Task (\S+) cache hit", again.stderr))
    uncached = {"start-tracking", "finish-tracking"}
    assert hits == set(_container_tasks()) - uncached, again.stderr[-3000:]
    root = tmp_path / "kfp-root"
    reports = list(root.rglob("html"))
    assert reports and reports[0].stat().st_size > 1000
    # The red team's leak rates reached the report as a table.
    page = reports[0].read_text()
    assert 'id="attacks"' in page and 'id="no-attacks"' not in page
    (leaks,) = [json.loads(p.read_text()) for p in root.rglob("leaks") if p.is_file()]
    assert leaks["eval_id"]["teacher"]["delivered"] == 0.0
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
    assert len(parents) == 2  # one per pipeline run
    # The exit handler gave each its pipeline's outcome.
    assert {(r.info.status, r.data.tags.get("kfp.state")) for r in parents} == {
        ("FINISHED", "SUCCEEDED")
    }
    first = min(parents, key=lambda r: r.info.start_time)
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == first.info.run_id]
    stages = {r.data.tags.get("rl2f.stage") for r in children}
    assert {"prepare", "train_rl2f", "train_single_turn", "distill", "red_team"} <= stages
    # Every stage of the first run found that run's parent (none opened a parent of its own).
    assert all(r.data.tags.get("mlflow.parentRunId") for r in runs if r not in parents)


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
