"""MLflow conventions against a real SQLite store and a real `mlflow server` whose artifacts go to
a real S3-compatible server on loopback."""

from __future__ import annotations

from pathlib import Path

import pytest
from servers import mlflow_server, s3_server

from rl2f.config import load_config
from rl2f.tracking import PIPELINE_KEY_ENV, TAG_ROLE, TAG_STAGE, log_metrics_by_turn, stage_run

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv(PIPELINE_KEY_ENV, f"test-{tmp_path.name}")
    return tmp_path


def _children(client, experiment_id: str, parent_id: str):
    return client.search_runs(
        [experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'"
    )


def test_stages_share_one_parent_in_sqlite(isolated_env: Path) -> None:
    from mlflow.tracking import MlflowClient

    cfg = load_config(
        REPO / "params.yaml", [f"tracking.tracking_uri=sqlite:///{isolated_env}/m.db"]
    )
    with stage_run(cfg, "prepare", sections=("data",)) as run:
        run.log_metric("tasks", 12)
        first = run.active_run().info.run_id
    with stage_run(cfg, "evaluate", sections=("eval",)) as run:
        log_metrics_by_turn(run, "acc", [0.2, 0.5, 0.7])
        second = run.active_run().info.run_id

    client = MlflowClient(f"sqlite:///{isolated_env}/m.db")
    a, b = client.get_run(first), client.get_run(second)
    parent_id = a.data.tags["mlflow.parentRunId"]
    assert parent_id == b.data.tags["mlflow.parentRunId"]
    parent = client.get_run(parent_id)
    assert parent.data.tags[TAG_ROLE] == "parent"
    assert parent.data.params["train.steps"] == str(cfg.train.steps)  # all params, flat
    assert a.data.tags[TAG_STAGE] == "prepare" and "data.seed" in a.data.params
    assert "train.steps" not in a.data.params  # a child logs its own sections only
    history = client.get_metric_history(second, "acc")
    assert [(m.step, m.value) for m in history] == [(1, 0.2), (2, 0.5), (3, 0.7)]
    assert {r.info.run_id for r in _children(client, a.info.experiment_id, parent_id)} == {
        first,
        second,
    }


def test_disabled_tracking_yields_none(isolated_env: Path) -> None:
    cfg = load_config(REPO / "params.yaml", ["tracking.enabled=false"])
    with stage_run(cfg, "prepare") as run:
        assert run is None
    assert not (isolated_env / "mlflow.db").exists()


@pytest.mark.slow
def test_server_with_s3_artifact_store(isolated_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.tracking import MlflowClient

    with s3_server(isolated_env / "s3") as s3:
        s3.make_bucket("mlflow")
        for key, value in s3.env().items():
            monkeypatch.setenv(key, value)
        with mlflow_server(isolated_env, "s3://mlflow/artifacts", s3.env()) as url:
            monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
            cfg = load_config(REPO / "params.yaml", ["tracking.experiment=server-test"])
            report = isolated_env / "report.md"
            report.write_text("# report\n")
            with stage_run(cfg, "report") as run:
                run.log_artifact(str(report))
                run_id = run.active_run().info.run_id
            client = MlflowClient(url)
            assert client.get_run(run_id).data.tags["mlflow.parentRunId"]
            stored = list((isolated_env / "s3" / "mlflow").rglob("report.md"))
            assert len(stored) == 1 and stored[0].read_text() == "# report\n"


def test_exit_handler_gives_the_parent_run_the_pipeline_outcome(
    isolated_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """start_tracking opens the parent by the Kubeflow run id; a stage in another pod finds the
    same parent by the id its pod carries; the exit handler closes it with the outcome."""
    import yaml
    from mlflow.tracking import MlflowClient

    from rl2f.pipeline_io import close_parent_run, open_parent_run
    from rl2f.tracking import KFP_RUN_ENV

    uri = f"sqlite:///{isolated_env}/m.db"
    monkeypatch.delenv(PIPELINE_KEY_ENV)
    monkeypatch.delenv(KFP_RUN_ENV, raising=False)
    cfg = load_config(REPO / "params.yaml", [f"tracking.tracking_uri={uri}"])
    params = yaml.safe_dump(cfg.model_dump(mode="json"))
    parent = open_parent_run(params, "run-1")
    monkeypatch.setenv(KFP_RUN_ENV, "run-1")  # what the stage's pod reads from its label
    with stage_run(cfg, "prepare") as run:
        child = run.active_run().info.run_id
    client = MlflowClient(uri)
    assert client.get_run(child).data.tags["mlflow.parentRunId"] == parent
    assert close_parent_run(params, "run-1", "FAILED") == "FAILED"
    closed = client.get_run(parent)
    assert closed.info.status == "FAILED" and closed.data.tags["kfp.state"] == "FAILED"
    # A run whose params never validated has no parent: the exit handler reports and succeeds.
    assert close_parent_run("train: {steps: oops}\n", "run-2", "FAILED") == ""


def test_models_are_registered_and_the_best_becomes_champion(
    isolated_env: Path, tiny_model_dir: Path
) -> None:
    """Trained models are logged with the transformers flavour, with their training data as a
    run input, as versions of one registered model; the best of this pipeline run is champion."""
    import mlflow
    import pandas as pd
    from mlflow.tracking import MlflowClient

    from rl2f.tracking import CHAMPION, REGISTERED_MODEL, TAG_MODEL, log_model, promote_champion

    uri = f"sqlite:///{isolated_env}/m.db"
    cfg = load_config(REPO / "params.yaml", [f"tracking.tracking_uri={uri}"])
    tasks = isolated_env / "train.parquet"
    pd.DataFrame({"id": ["a", "b"], "prompt": ["1 + 1", "2 + 2"]}).to_parquet(tasks)
    for name in ("rl2f", "single_turn"):
        with stage_run(cfg, f"train_{name}") as run:
            version = log_model(run, tiny_model_dir, name, {"training": tasks})
            run_id = run.active_run().info.run_id
        assert version is not None
    client = MlflowClient(uri)
    logged = client.get_run(run_id)
    assert [d.dataset.name for d in logged.inputs.dataset_inputs] == ["train"]
    flavors = mlflow.models.get_model_info(f"models:/{REGISTERED_MODEL}/{version}").flavors
    assert "transformers" in flavors

    metrics = {
        "rl2f": {"eval_id": {"teacher": {"acc_by_turn": [0.2, 0.6]}}},
        "single_turn": {"eval_id": {"teacher": {"acc_by_turn": [0.3, 0.4]}}},
        "base": {"eval_id": {"teacher": {"acc_by_turn": [0.9, 0.9]}}},  # not registered
    }
    champion = promote_champion(cfg, metrics)
    alias = client.get_model_version_by_alias(REGISTERED_MODEL, CHAMPION)
    assert alias.version == champion and alias.tags[TAG_MODEL] == "rl2f"
