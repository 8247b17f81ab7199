"""`dvc repro` end to end on the ci profile, in a throwaway git + DVC repo, then an experiment
with `dvc exp run -S` and `dvc exp show`: the workflow a user runs locally."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _run(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=3000)
    assert result.returncode == 0, (
        f"{' '.join(args)}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
    return result


@pytest.fixture(scope="module")
def dvc_repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("dvc-repo")
    for name in ("params.yaml", "dvc.yaml", "profiles", "src", ".dvc", ".dvcignore"):
        source = REPO / name
        if source.is_dir():
            shutil.copytree(
                source, root / name, ignore=shutil.ignore_patterns("__pycache__", "tmp", "cache")
            )
        elif source.exists():
            shutil.copy2(source, root / name)
    # The ci profile, folded into params.yaml so DVC tracks the values it runs with.
    from rl2f.config import load_config

    cfg = load_config(root / "params.yaml", profile="ci")
    (root / "params.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    env = os.environ | {
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    env.pop("RL2F_PROFILE", None)
    (root / ".gitignore").write_text("mlflow.db\nmlartifacts/\n*.checkpoints/\n")
    _run("git", "init", "-q", cwd=root, env=env)
    _run("git", "add", "-A", cwd=root, env=env)
    _run("git", "commit", "-qm", "init", cwd=root, env=env)
    _run(str(BIN / "dvc"), "repro", cwd=root, env=env)
    return root, env


@pytest.mark.slow
def test_dvc_repro_produces_every_output(dvc_repo: tuple[Path, dict[str, str]]) -> None:
    root, env = dvc_repo
    for split in ("train", "eval_id", "eval_ood"):
        assert (root / "data" / "tasks" / f"{split}.parquet").exists()
    for model in ("base", "rl2f", "single_turn", "rl2f_critic"):
        assert (root / "models" / model / "config.json").exists(), model
    metrics = json.loads((root / "reports" / "metrics.json").read_text())
    assert {"base", "single_turn", "rl2f", "rl2f_critic"} <= set(metrics)
    assert (root / "reports" / "report.html").stat().st_size > 1000
    status = _run(str(BIN / "dvc"), "status", cwd=root, env=env).stdout
    assert "up to date" in status.lower()


@pytest.mark.slow
def test_dvc_experiment_with_override(dvc_repo: tuple[Path, dict[str, str]]) -> None:
    root, env = dvc_repo
    _run("git", "add", "-A", cwd=root, env=env)
    _run("git", "commit", "-qm", "lock", cwd=root, env=env)
    _run(
        str(BIN / "dvc"),
        "exp",
        "run",
        "-S",
        "eval.max_turns_id=3",
        "-n",
        "short-eval",
        cwd=root,
        env=env,
    )
    shown = json.loads(_run(str(BIN / "dvc"), "exp", "show", "--json", cwd=root, env=env).stdout)
    text = json.dumps(shown)
    assert "short-eval" in text
    assert "reports/metrics.json" in text and "reports/validation.json" in text
