"""A retried Kubeflow training step resumes: the training component's body
(:func:`rl2f.pipeline_io.run_stage`) keeps its workspace under ``RL2F_WORK_ROOT`` (durable
storage in the cluster), keyed by what decides the result, so the second attempt of a killed
step finds the first attempt's checkpoints. A config error fails before any work."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from training_helpers import REPO_ROOT, shared_coin_policy, subprocess_env, sum_tasks

from rl2f.config import ConfigError, load_config
from rl2f.errors import UserError
from rl2f.pipeline_io import WORK_ROOT_ENV, durable_workspace, run_stage
from rl2f.tasks.io import write_tasks
from rl2f.training.checkpoints import TRAINER_STATE

STEPS = 3


@pytest.fixture(scope="module")
def coin_model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    return shared_coin_policy(tmp_path_factory.getbasetemp(), tiny_model_dir)


def _params_yaml() -> str:
    """The whole config as text, as the pipeline's compose_params step hands it to each step."""
    cfg = load_config(
        REPO_ROOT / "params.yaml",
        [
            "tracking.enabled=false",
            "train.tasks_per_step=2",
            "train.num_generations=4",
            f"train.steps={STEPS}",
            "train.save_steps=1",
        ],
        profile="ci",
    )
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def _train_step_script(params: Path, inputs: dict[str, str], output: str) -> list[str]:
    """The train component's body in a fresh interpreter (a pod)."""
    code = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from rl2f.pipeline_io import run_stage\n"
        "run_stage('train_rl2f', Path(sys.argv[1]).read_text(), [],\n"
        "          inputs=json.loads(sys.argv[2]), outputs={'models/rl2f': sys.argv[3]})\n"
    )
    return [sys.executable, "-c", code, str(params), json.dumps(inputs), output]


def _kill_pod_after_first_checkpoint(
    command: list[str], env: dict, checkpoints: Path, log: Path
) -> None:
    """SIGKILL the step and the stage process it started, as a node failure or an OOM kill
    takes down the whole pod, once the first complete checkpoint is on durable storage."""
    with log.open("w") as out:
        process = subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + 600
        try:
            while not list(checkpoints.glob(f"checkpoint-*/{TRAINER_STATE}")):
                assert process.poll() is None, log.read_text()[-3000:]
                assert time.monotonic() < deadline, "no checkpoint within 10 minutes"
                time.sleep(0.05)
        finally:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.mark.slow
def test_retried_training_step_resumes_from_durable_checkpoints(
    tmp_path: Path, coin_model_dir: Path
) -> None:
    tasks = tmp_path / "artifacts" / "tasks"
    write_tasks(tasks / "train.parquet", sum_tasks())
    inputs = {"data/tasks": str(tasks), "models/base": str(coin_model_dir)}
    params_text = _params_yaml()
    params = tmp_path / "params.yaml"
    params.write_text(params_text)
    durable_root = tmp_path / "pvc" / "rl2f-work"
    durable_root.parent.mkdir()  # the volume's mount point
    env = subprocess_env() | {WORK_ROOT_ENV: str(durable_root)}

    os.environ[WORK_ROOT_ENV] = str(durable_root)
    try:
        workspace = durable_workspace("train_rl2f", params_text, [], inputs)
    finally:
        del os.environ[WORK_ROOT_ENV]
    assert workspace is not None and workspace.parent == durable_root
    checkpoints = workspace / "models" / "rl2f.checkpoints"

    output = tmp_path / "artifacts" / "model"
    command = _train_step_script(params, inputs, str(output))
    _kill_pod_after_first_checkpoint(command, env, checkpoints, tmp_path / "attempt1.log")
    assert not output.exists(), "the step finished before it could be interrupted"
    left = {p.name for p in checkpoints.glob("checkpoint-*")}

    retry = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert retry.returncode == 0, retry.stderr[-3000:]
    summary = json.loads((output / "training_summary.json").read_text())
    assert summary["resumed_from"] is not None
    assert Path(summary["resumed_from"]).name in left
    assert summary["steps"] == STEPS
    assert not workspace.exists()  # cleaned up once the output artifact is written


def test_other_inputs_get_another_workspace(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(WORK_ROOT_ENV, str(tmp_path))
    inputs = {"data/tasks": "/artifacts/run1/prepare/tasks"}
    one = durable_workspace("train_rl2f", "a: 1\n", [], inputs)
    assert one == durable_workspace("train_rl2f", "a: 1\n", [], dict(inputs))
    assert one != durable_workspace("train_rl2f", "a: 2\n", [], inputs)
    assert one != durable_workspace("train_rl2f", "a: 1\n", ["train.steps=9"], inputs)
    assert one != durable_workspace("train_rl2f", "a: 1\n", [], {"data/tasks": "/other"})
    assert one != durable_workspace("train_single_turn", "a: 1\n", [], inputs)
    assert durable_workspace("evaluate", "a: 1\n", [], inputs) is None  # does not checkpoint
    monkeypatch.delenv(WORK_ROOT_ENV)
    assert durable_workspace("train_rl2f", "a: 1\n", [], inputs) is None
    # The cluster's setting reaches kfp.local tasks too; with no volume mounted there, no
    # durable workspace (rather than failing to create one).
    monkeypatch.setenv(WORK_ROOT_ENV, str(tmp_path / "not-mounted" / "rl2f-work"))
    assert durable_workspace("train_rl2f", "a: 1\n", [], inputs) is None


def test_config_error_fails_before_any_work(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(WORK_ROOT_ENV, str(tmp_path / "work"))
    params_text = (REPO_ROOT / "params.yaml").read_text()
    with pytest.raises((ConfigError, UserError), match="no_such_field"):
        run_stage(
            "train_rl2f",
            params_text,
            ["train.no_such_field=1"],
            inputs={"data/tasks": str(tmp_path / "missing")},  # never looked at
        )
    assert not (tmp_path / "work").exists()
