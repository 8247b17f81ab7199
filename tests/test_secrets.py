"""Credentials come only from the environment (or k8s Secrets mounted as environment variables)
and must never be written anywhere: not to params files, logs, MLflow params, tags or artifacts,
reports, nor the compiled pipeline.

The test plants distinctive random values in every credential variable the project or its
libraries read, runs real stages on the ci profile with MLflow tracking on (local SQLite), then
scans every byte those runs produced for them.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RL2F = Path(sys.executable).parent / "rl2f"

SECRET_VARS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "OPENAI_API_KEY",
)


# Planted too, but an identity rather than a secret: MLflow records it as the run's owner (the
# ``mlflow.user`` tag, the UI's User column), as a tracking server does for its logins. It may
# appear there and nowhere else.
USERNAME_VAR = "MLFLOW_TRACKING_USERNAME"


@pytest.fixture(scope="module")
def environment() -> dict[str, str]:
    # Random and long: a hit cannot be a coincidence, and none is a substring of another.
    return {name: f"sEcReT{secrets.token_hex(16)}" for name in (*SECRET_VARS, USERNAME_VAR)}


@pytest.fixture(scope="module")
def planted(environment: dict[str, str]) -> dict[str, str]:
    """The values that must appear nowhere."""
    return {name: value for name, value in environment.items() if name != USERNAME_VAR}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, environment: dict[str, str]) -> dict:
    root = tmp_path_factory.mktemp("secrets-ws")
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    shutil.copytree(REPO / "profiles", root / "profiles")
    env = os.environ | environment
    env |= {
        "RL2F_PROFILE": "ci",
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        "PYTHONPATH": str(REPO / "src"),
    }
    env.pop("RL2F_PARENT_RUN_ID", None)
    logs: list[str] = []

    def rl2f(*args: str, cwd: Path = root) -> None:
        result = subprocess.run(
            [str(RL2F), "-v", *args],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        logs.extend([result.stdout, result.stderr])
        assert result.returncode == 0, result.stderr[-3000:]

    # Cheap tracked stages: each opens the pipeline's parent run (which logs the whole config)
    # and its own child run (its params section, its summary as an artifact).
    rl2f("prepare")
    rl2f("validate")
    # A failing run too: error paths print what they were given.
    bad = subprocess.run(
        [str(RL2F), "prepare", "-S", "data.sources.0.kind=nope"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2
    logs.extend([bad.stdout, bad.stderr])
    compiled = root / "compiled" / "rl2f.yaml"
    compiled.parent.mkdir()
    rl2f("pipeline", "compile", "--output", str(compiled), cwd=REPO)
    return {"root": root, "logs": logs, "compiled": compiled, "env": env}


def leaks(text: str, planted: dict[str, str]) -> list[str]:
    return [name for name, value in planted.items() if value in text]


def test_secrets_are_not_in_logs(workspace: dict, planted: dict[str, str]) -> None:
    assert any("MLflow" in log for log in workspace["logs"])  # tracking really was on
    assert leaks("\n".join(workspace["logs"]), planted) == []


def test_secrets_are_not_in_any_written_file(workspace: dict, planted: dict[str, str]) -> None:
    """Every file the runs wrote: task files, reports, the params as read, the MLflow SQLite
    database (params, tags, run names) and its artifact store, the compiled pipeline."""
    root: Path = workspace["root"]
    written = [p for p in root.rglob("*") if p.is_file()]
    assert (root / "mlflow.db").exists() and (root / "reports" / "validation.json").exists()
    assert workspace["compiled"].exists()
    assert any("mlartifacts" in p.parts for p in written)  # the stage summaries MLflow stored
    found = {}
    for path in written:
        data = path.read_bytes()
        hits = [name for name, value in planted.items() if value.encode() in data]
        if hits:
            found[str(path.relative_to(root))] = hits
    assert found == {}


def test_secrets_are_not_in_mlflow_runs(
    workspace: dict, planted: dict[str, str], environment: dict[str, str]
) -> None:
    """Through MLflow's own API, as the UI shows it: every run's params, tags and text
    artifacts."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(workspace["env"]["MLFLOW_TRACKING_URI"])
    runs = [
        run
        for experiment in client.search_experiments()
        for run in client.search_runs([experiment.experiment_id])
    ]
    stages = {run.data.tags.get("rl2f.stage") for run in runs}
    assert {"prepare", "validate"} <= stages
    assert any(run.data.tags.get("rl2f.role") == "parent" and run.data.params for run in runs)

    def artifacts(run_id: str, path: str | None = None) -> list[str]:
        out = []
        for item in client.list_artifacts(run_id, path):
            out.extend(artifacts(run_id, item.path) if item.is_dir else [item.path])
        return out

    texts = []
    username = environment[USERNAME_VAR]
    for run in runs:
        tags = dict(run.data.tags)
        assert tags.pop("mlflow.user", username) == username  # the one place it belongs
        texts += [f"{k}={v}" for k, v in {**run.data.params, **tags}.items()]
        texts.append(run.info.run_name or "")
        for artifact in artifacts(run.info.run_id):
            local = client.download_artifacts(run.info.run_id, artifact)
            texts.append(Path(local).read_bytes().decode("utf-8", "replace"))
    assert leaks("\n".join(texts), environment) == []


def test_secrets_are_not_in_pipeline_arguments(
    workspace: dict, planted: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """What `rl2f pipeline submit` sends to Kubeflow with the config it loaded."""
    from rl2f.config import load_config
    from rl2f.kubeflow import pipeline_arguments

    for name, value in planted.items():
        monkeypatch.setenv(name, value)
    cfg = load_config(workspace["root"] / "params.yaml", profile="ci")
    assert leaks(repr(pipeline_arguments(cfg)), planted) == []
    # The compiled pipeline names the k8s Secrets the pods read, never their values.
    compiled = workspace["compiled"].read_text()
    assert "secret" in compiled.lower()
